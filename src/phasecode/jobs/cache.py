"""`phasecode cache`: the inventory of ``cache.inventory``, printed."""

from __future__ import annotations

from pathlib import Path

from phasecode.cache.inventory import KINDS, age, clear, entries, human, prune, usage
from phasecode.cache.root import cache_dir
from phasecode.outputs import write_json_or_print


def ls_job(kinds: list[str] | None, json_path: Path | None = None) -> list[dict]:
    found = entries(kinds)
    print(f"{cache_dir()}: {len(found)} entries, {human(sum(e.size for e in found))}")
    print(f"{'kind':<14}{'size':>11}{'last used':>11}  what it is for")
    for entry in found:
        what = entry.what
        fingerprint = entry.inputs.get("fingerprint")
        if fingerprint:
            what += f" [model {str(fingerprint)[:12]}]"
        print(f"{entry.kind:<14}{human(entry.size):>11}{age(entry.last_used):>11}  {what}")
        print(f"{'':<36}{entry.path.name}")
    rows = [entry.as_dict() for entry in found]
    if json_path is not None:
        write_json_or_print(json_path, {"root": str(cache_dir()), "entries": rows})
    return rows


def du_job() -> dict[str, dict]:
    totals = usage()
    print(f"{'kind':<14}{'entries':>8}{'size':>12}  what it holds")
    for kind, total in totals.items():
        print(f"{kind:<14}{total['entries']:>8}{human(total['bytes']):>12}  {KINDS[kind]}")
    overall = sum(t["bytes"] for t in totals.values())
    print(f"{'total':<14}{sum(t['entries'] for t in totals.values()):>8}{human(overall):>12}")
    return totals


def clear_job(kinds: list[str] | None) -> None:
    removed, kept = clear(kinds)
    freed = human(sum(entry.size for entry in removed))
    print(f"removed {len(removed)} entries ({freed}) from {cache_dir()}")
    for entry in kept:
        print(f"kept {entry.kind} {entry.path.name}: another process is building it")


def prune_job(max_size: int) -> None:
    removed, left = prune(max_size)
    freed = human(sum(entry.size for entry in removed))
    print(
        f"removed {len(removed)} least recently used entries ({freed}); the cache holds "
        f"{human(left)} (bound {human(max_size)})"
    )
