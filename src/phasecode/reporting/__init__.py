"""`phasecode report`: figures and a Markdown/HTML report of a converted model, drawn from the
artifact alone (histograms.py: activation histograms stored at conversion; levels.py: a
neuron's levels and thresholds; figures.py: the paper-style figures; report.py: the document).
"""
