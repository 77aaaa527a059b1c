"""Turns bench/compare.sh's results.jsonl into the Markdown tables of
docs/benchmarks.md: the machine and disk, then per workload the roofline,
JetStream (default fsync and fsync always) and Ferrolog, with Ferrolog as a
fraction of the roofline and a multiple of JetStream."""
import json
import sys


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = lambda system, variant=None: [r for r in rows if r["system"] == system and (variant is None or r["variant"] == variant)]
    out = []
    for m in by("machine"):
        out.append(f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}.")
    for d in by("disk"):
        out.append(f"Disk: sequential write with fdatasync {d['seq_write_fdatasync']}; one 4 KiB O_DSYNC write {d['dsync_4k_write_us']} µs.")
    out.append("")
    out.append("Produce, closed loop, batches of 16 records, one in flight per producer; Ferrolog on 12 partitions, RF=3:")
    out.append("")
    out.append("| record | producers | roofline rec/s | JetStream R3 rec/s (p99 ms) | JetStream R3 fsync always | Ferrolog acks=all rec/s (p99 ms) | acks=1 | acks=0 | all / roofline | all / JetStream |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def find(system, variant, size, producers):
        for r in by(system, variant):
            if r.get("record_size") == size and r.get("producers") == producers and "records_per_sec" in r:
                return r
        return None

    fmt = lambda r: f"{r['records_per_sec']:,.0f}" if r else "–"
    fmtp = lambda r: f"{r['records_per_sec']:,.0f} ({r['p99_ms']:.1f})" if r else "–"
    for size, producers in [(1024, 1), (1024, 16), (100, 1), (100, 16)]:
        roof = find("roofline", "", size, producers)
        js = find("jetstream", "default", size, producers)
        jsa = find("jetstream", "always", size, producers)
        fa = find("ferrolog", "acks=all", size, producers)
        f1 = find("ferrolog", "acks=1", size, producers)
        f0 = find("ferrolog", "acks=0", size, producers)
        ratio = lambda a, b: f"{a['records_per_sec'] / b['records_per_sec']:.2f}" if a and b and b["records_per_sec"] else "–"
        js_ref = jsa or js
        out.append(
            f"| {size} B | {producers} | {fmt(roof)} | {fmtp(js)} | {fmtp(jsa)} | {fmtp(fa)} | {fmtp(f1)} | {fmtp(f0)} | {ratio(fa, roof)} | {ratio(fa, js_ref)}{'' if jsa else ' (vs default fsync)'} |"
        )
    skipped = [r for r in by("jetstream") if "skipped" in r]
    for s in skipped:
        out.append("")
        out.append(f"JetStream '{s['variant']}': {s['skipped']}.")
    out.append("")
    out.append("Ferrolog, other workloads:")
    out.append("")
    out.append("| variant | record | producers | partitions | records/s | MB/s | p50 ms | p99 ms | p99.9 ms |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in by("ferrolog"):
        if r["variant"] in ("acks=all", "acks=1", "acks=0") or "records_per_sec" not in r or "p50_ms" not in r:
            continue
        out.append(
            f"| {r['variant']} | {r['record_size']} B | {r['producers']} | {r['partitions']} | {r['records_per_sec']:,.0f} | {r['mb_per_sec']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} |"
        )
    for r in by("ferrolog", "consume catch-up"):
        out.append("")
        out.append(f"Consume (catch-up from the start, one consumer, 12 partitions): {r['records']:,} records in {r['seconds']:.1f} s = **{r['records_per_sec']:,.0f} records/s** ({r['mb_per_sec']:.1f} MB/s).")
    for r in rows:
        if r["system"] == "ferrolog" and r["variant"].startswith("end-to-end") and r.get("e2e_ms"):
            e = r["e2e_ms"]
            out.append("")
            out.append(f"End-to-end latency ({r['variant']}, produce acks=all to consumer delivery, ms resolution): p50 {e['p50']} ms, p99 {e['p99']} ms, p99.9 {e['p999']} ms, max {e['max']} ms over {r['records']:,} records.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
