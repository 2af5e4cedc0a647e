"""MBPO against model-free SAC, seed by seed (issue 23's table). Not a test: it prints numbers.

    python benchmarks/mbpo_seeds.py --seeds 0 1 2 3 4                 # 3,000 real steps each, both algorithms
    python benchmarks/mbpo_seeds.py --seeds 0 --real-steps 1000 --json out.json
    python benchmarks/mbpo_seeds.py --table a.json b.json             # one table from saved runs

Each run is ``torchwm_rl.app.mbpo.run`` (what ``torchwm-rl mbpo`` runs) with its defaults; the
baseline is the same SAC, networks and updates per step on the real env alone. Per seed: the
real steps at which the 20-episode evaluation (every 50 real steps from the warm-up's end, by
default) first reached the target, for both, their ratio, and the final 20-episode real return.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics


def _seconds(run: dict) -> str:
    """``wall (CPU)`` seconds of a run (CPU seconds are in results from 2026-12-07 on)."""
    if not run:
        return "n/a"
    cpu = run.get("cpu_seconds")
    return f"{run['wall_seconds']:.0f}" + ("" if cpu is None else f" ({cpu:.0f})")


def table(runs: list) -> str:
    rows = ["| seed | MBPO steps to target | SAC steps to target | ratio | MBPO final | SAC final | MBPO s (CPU s) | "
            "SAC s (CPU s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        b = r.get("baseline") or {}
        m_steps, s_steps = r["steps_to_target"], b.get("steps_to_target")
        ratio = s_steps / m_steps if m_steps and s_steps else None
        if ratio is not None:
            ratios.append(ratio)
        fmt = lambda v: "never" if v is None else f"{v:,}"  # noqa: E731
        rows.append(f"| {r['seed']} | {fmt(m_steps)} | {fmt(s_steps) if b else 'n/a'} | "
                    f"{'' if ratio is None else f'{ratio:.1f}x'} | {r['real_mean_return']:.1f} | "
                    f"{b.get('real_mean_return', float('nan')):.1f} | {_seconds(r)} | {_seconds(b)} |")
    steps = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
    if steps:
        # over every seed: a seed that never reached the target counts as more steps than the run had
        median = statistics.median([math.inf if r["steps_to_target"] is None else r["steps_to_target"] for r in runs])
        rows.append(f"\nmedian MBPO steps to target over all seeds: {'never' if median == math.inf else f'{median:,.0f}'} "
                    f"({len(steps)} of {len(runs)} seeds reached it)")
    if ratios:
        rows.append(f"median ratio SAC/MBPO: {statistics.median(ratios):.1f}x")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--real-steps", type=int, default=3000)
    parser.add_argument("--task", default="Pendulum-v1")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--only-baseline", action="store_true", help="only the model-free SAC runs")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="MBPOConfig fields to override, e.g. rollouts_per_step=100 horizon=(200,1000,1,5)")
    parser.add_argument("--json", default=None, help="write the runs (a list) to this file")
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON", help="only print a table from files")
    parser.add_argument("--baseline-table", nargs="+", default=None, metavar="JSON",
                        help="with --table: --only-baseline runs to pair with the MBPO runs by seed")
    args = parser.parse_args()
    if args.table:
        runs = [run for path in args.table for run in json.load(open(path))]
        if args.baseline_table:  # SAC runs saved apart (--only-baseline): matched to the MBPO runs by seed
            sac = {r["seed"]: r for path in args.baseline_table for r in json.load(open(path))}
            runs = [dict(r, baseline=sac[r["seed"]]) if r["seed"] in sac else r for r in runs]
        print(table(runs))
        return
    import ast
    import dataclasses

    from torchwm_rl.app.mbpo import MBPOConfig, run

    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    runs = []
    for seed in args.seeds:
        cfg = MBPOConfig(task=args.task, seed=seed, real_steps=args.real_steps, progress=False, **overrides)
        if args.only_baseline:
            runs.append(run(dataclasses.replace(cfg, model_free=True)))
        else:
            result = run(cfg)
            if not args.no_baseline:
                result["baseline"] = run(dataclasses.replace(cfg, model_free=True))
            runs.append(result)
        r = runs[-1]
        print(f"seed {seed} {r['algorithm']}: steps_to_target {r['steps_to_target']} final {r['real_mean_return']:.1f} "
              f"wall {r['wall_seconds']} s cpu {r.get('cpu_seconds')} s", flush=True)
        if args.json:
            json.dump(runs, open(args.json, "w"), indent=1)
    print(table(runs))


if __name__ == "__main__":
    main()
