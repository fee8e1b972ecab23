"""Spike-level execution of a converted model: spike trains, the spiking operators, counting."""
