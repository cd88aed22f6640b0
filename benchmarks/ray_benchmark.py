"""Ray benchmark (issue 17): ingest throughput in one process vs on a local Ray (the overhead), and on
a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``) with 1, 2, ... worker nodes.

    nice -n 10 python benchmarks/ray_benchmark.py --pages 2000 --nodes 1,2
    python benchmarks/ray_benchmark.py --pages 20000 --nodes 1,2,4 --node-cpus 2   # a quiet machine with cores to spare

The corpus (``benchmarks/corpus.py``) is N pages of sample_docs' real scans, every file a unique copy.
Every run is a fresh process on a fresh collection, with the default pipeline and the bundled
weights:

* ``in-process``: ``docsort.jobs.ingest.ingest`` as ``docsort ingest`` runs it (worker pool + batches);
* ``ray local``: the same with ``[ray] address = "local"`` (``ray.init(address="local", num_cpus=C)``);
* ``ray cluster, k nodes``: a head node with no CPUs (the driver and the writer only) and ``k``
  simulated worker nodes of ``--node-cpus`` CPUs each; on one machine the nodes share its cores,
  so this measures Ray's scheduling over nodes (and its overhead), not more hardware.

Pages/s counts the whole ingest (scan, render, embed, store, index) over its wall time, Ray start-up
and the actors' model build included; ``steady pages/s`` leaves out the time to the first stored
page (Ray start, actor start-up). Writes ``OUT/ray-<pages>.json`` and prints a Markdown table.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _child(mode: str, corpus: str, collection: str, nodes: int, node_cpus: int, cpus: int) -> dict:
    """One run, in this (fresh) process; returns its figures."""
    import threading

    from docsort.config.settings import RaySettings, load_pipeline
    from docsort.jobs.ingest import ingest
    from docsort.store.storage import Collection

    settings = load_pipeline("default").with_overrides(weights="bundled")
    cluster = None
    if mode == "local":
        settings = settings.with_ray(ray=RaySettings(address="local", num_cpus=cpus))
    elif mode == "cluster":
        import ray
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(nodes):
            cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        settings = settings.with_ray(ray=RaySettings(address=cluster.address))
    col = Collection(Path(collection), create=True)
    first: list[float] = []
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done and not first:
            first.append(time.perf_counter() - t0)

    report = ingest(col, [corpus], settings, progress=False, log=lambda m: None, on_progress=progress)
    wall = time.perf_counter() - t0
    col.close()
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    steady = wall - (first[0] if first else 0.0)
    return {"mode": mode, "nodes": nodes, "node_cpus": node_cpus, "pages": report.pages_added, "wall_s": round(wall, 1),
            "pages_per_s": round(report.pages_added / wall, 2), "first_page_s": round(first[0], 1) if first else None,
            "steady_pages_per_s": round(report.pages_added / steady, 2) if steady > 0 else None,
            "failures": len(report.failures),
            "stages": {k: round(v, 1) for k, v in report.stage_seconds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--nodes", default="1,2", help="simulated worker-node counts, comma-separated ('' = none)")
    ap.add_argument("--node-cpus", type=int, default=1, help="CPUs of each simulated worker node")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "docsort-ray-benchmark")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, corpus, collection, nodes, node_cpus, cpus = a.child
        print(json.dumps(_child(mode, corpus, collection, int(nodes), int(node_cpus), int(cpus))))
        return

    from corpus import build_corpus

    a.out.mkdir(parents=True, exist_ok=True)
    corpus = a.out / f"corpus-{a.pages}"
    files, pages = build_corpus(corpus, a.pages)
    runs = [("in-process", 0), ("local", 0)] + [("cluster", int(k)) for k in a.nodes.split(",") if k.strip()]
    results = []
    env = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    for mode, nodes in runs:
        collection = a.out / f"col-{a.pages}-{mode}-{nodes}"
        subprocess.run(["rm", "-rf", str(collection)], check=True)
        load_before = open("/proc/loadavg").read().split()[:3]
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus), str(collection), str(nodes),
                              str(a.node_cpus), str(a.cpus)], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{mode} run failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["loadavg_before"] = load_before
        r["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
        results.append(r)
        print(json.dumps(r), flush=True)
    (a.out / f"ray-{a.pages}.json").write_text(json.dumps({"files": files, "pages": pages, "runs": results}, indent=1))
    base = results[0]["pages_per_s"]
    print(f"\n{pages} pages ({files} files), {os.cpu_count()} cores\n")
    print("| run | pages/s | vs in-process | first page (s) | steady pages/s | load avg (1 min) before → after |")
    print("|---|---|---|---|---|---|")
    for r in results:
        name = {"in-process": "in-process", "local": f"ray local ({a.cpus} CPUs)"}.get(
            r["mode"], f"ray cluster, {r['nodes']} node(s) x {r['node_cpus']} CPU")
        print(f"| {name} | {r['pages_per_s']} | {r['pages_per_s'] / base:.2f}x | {r['first_page_s']} | "
              f"{r['steady_pages_per_s']} | {r['loadavg_before'][0]} → {r['loadavg_after'][0]} |")


if __name__ == "__main__":
    main()
