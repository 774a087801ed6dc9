"""Medians over rounds, ratios against the best peer, the issue's targets
with PASS/MISS, the printed table and the JSON document."""

import datetime
import os
import platform
import statistics
import subprocess

PEERS = ("nginx", "haproxy")

SCENARIOS = {
    "S1": "keep-alive HTTP/1.1, GET /bytes/64, closed loop",
    "S1-half": "S1 at a fixed rate: half the slowest proxy's S1 peak (h2load)",
    "S2": "new client connection per request (Connection: close)",
    "S3": "keep-alive, 64 KiB responses",
    "S4-keepalive": "TLS 1.3 keep-alive (ECDSA P-256)",
    "S4-handshake": "TLS 1.3 full handshake per request",
    "S5": "WebSocket echo, 16 connections x 32 pipelined 32-byte messages (rate = messages/s)",
    "S6": "switchyard with 1 / 1,000 / 10,000 routes (Ingresses, one host each)",
    "S7": "a Service of 10,000 endpoints; steady, then 10% replaced every second",
}
LOWER_IS_BETTER = {"p50_ms", "p99_ms", "cpu_us", "rss_mb"}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    out = {}
    for r in runs:
        out.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r)
    summary = {}
    for scenario, by_target in out.items():
        summary[scenario] = {}
        for target, rs in by_target.items():
            s = {
                "rounds": len(rs),
                "rps": _median(r["rps"] for r in rs),
                "p50_ms": _median(r.get("p50_ms") for r in rs),
                "p99_ms": _median(r.get("p99_ms") for r in rs),
                "cpu_us": _median(r["cpu_s"] * 1e6 / r["requests"] if r["requests"] and target != "direct" else None
                                  for r in rs),
                "rss_mb": _median(r["rss_kb"] / 1024 if target != "direct" else None for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
            }
            if scenario == "S2":
                # Accepted TCP connections (system-wide PassiveOpens) minus
                # the client's own: one per response plus those cut off at
                # the end (at most `connections`). What remains was opened
                # toward the backend.
                upstream = [max(0, r["passive_opens"] - r["requests"] - r.get("connections", 32)) for r in rs]
                s["upstream_conns_per_req"] = _median(u / r["requests"] for u, r in zip(upstream, rs))
                s["upstream_reuse"] = 1 - s["upstream_conns_per_req"]
            summary[scenario][target] = s
    return summary


def best_peer(summary, scenario, metric):
    vals = [summary[scenario][p][metric] for p in PEERS if p in summary.get(scenario, {})
            and summary[scenario][p][metric] is not None]
    if not vals:
        return None
    return min(vals) if metric in LOWER_IS_BETTER else max(vals)


def add_ratios(summary):
    for scenario, by_target in summary.items():
        if scenario == "S6":
            continue
        for name, s in by_target.items():
            s["vs_best_peer"] = {}
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_us", "rss_mb"):
                best = best_peer(summary, scenario, metric)
                if best and s[metric] is not None:
                    s["vs_best_peer"][metric] = s[metric] / best


def _get(summary, scenario, target, metric):
    try:
        return summary[scenario][target][metric]
    except (KeyError, TypeError):
        return None


def check(rows, name, target, measured, ok, detail):
    if measured is None:
        rows.append({"target": name, "goal": target, "measured": "not measured", "result": "MISS"})
    else:
        rows.append({"target": name, "goal": target, "measured": detail, "result": "PASS" if ok else "MISS"})


def targets(summary, memory, extra):
    rows = []
    g = lambda sc, t, m: _get(summary, sc, t, m)  # noqa: E731
    sw_cpu, best_cpu = g("S1", "switchyard", "cpu_us"), best_peer(summary, "S1", "cpu_us")
    if sw_cpu and best_cpu:
        check(rows, "S1 proxy CPU per request", "<= 0.95 x best peer", sw_cpu,
              sw_cpu <= 0.95 * best_cpu, f"{sw_cpu:.1f} us vs {best_cpu:.1f} us ({sw_cpu / best_cpu:.2f}x)")
    sw, d = g("S1", "switchyard", "rps"), g("S1", "direct", "rps")
    if sw and d:
        check(rows, "S1 proxied/direct requests/s", ">= 0.9", sw, sw / d >= 0.9, f"{sw / d:.3f}")
    d99 = g("S1-half", "direct", "p99_ms")
    if d99 is not None:
        added = {t: g("S1-half", t, "p99_ms") - d99 for t in ("switchyard",) + PEERS if g("S1-half", t, "p99_ms")}
        if "switchyard" in added:
            peer = min(added[p] for p in PEERS if p in added)
            check(rows, "S1 added p99 at half of peak load", "<= best peer", added["switchyard"],
                  added["switchyard"] <= peer, f"{added['switchyard']:.3f} ms vs {peer:.3f} ms")
    sw, ng = g("S2", "switchyard", "cpu_us"), g("S2", "nginx", "cpu_us")
    if sw and ng:
        check(rows, "S2 proxy CPU per request", "<= nginx", sw, sw <= ng, f"{sw:.1f} us vs {ng:.1f} us ({sw / ng:.2f}x)")
    reuse = g("S2", "switchyard", "upstream_reuse")
    check(rows, "S2 upstream connection reuse", ">= 99.9%", reuse, reuse is not None and reuse >= 0.999,
          f"{reuse * 100:.2f}% (approx., from TCP PassiveOpens)" if reuse is not None else "")
    sw, ng = g("S3", "switchyard", "cpu_us"), g("S3", "nginx", "cpu_us")
    if sw and ng:
        check(rows, "S3 proxy CPU per request", "<= 0.9 x nginx", sw, sw <= 0.9 * ng,
              f"{sw:.1f} us vs {ng:.1f} us ({sw / ng:.2f}x)")
    sw, hp = g("S4-keepalive", "switchyard", "cpu_us"), g("S4-keepalive", "haproxy", "cpu_us")
    if sw and hp:
        check(rows, "S4 TLS keep-alive CPU per request", "<= 0.95 x HAProxy", sw, sw <= 0.95 * hp,
              f"{sw:.1f} us vs {hp:.1f} us ({sw / hp:.2f}x)")
    sw, hp = g("S4-handshake", "switchyard", "rps"), g("S4-handshake", "haproxy", "rps")
    if sw and hp:
        check(rows, "S4 TLS handshakes/s", ">= HAProxy", sw, sw >= hp, f"{sw:.0f} vs {hp:.0f} ({sw / hp:.2f}x)")
    sw, best = g("S5", "switchyard", "rps"), best_peer(summary, "S5", "rps")
    if sw and best:
        check(rows, "S5 WebSocket messages/s", ">= best peer", sw, sw >= best,
              f"{sw:.0f} vs {best:.0f} ({sw / best:.2f}x; client-bound, see CPU/msg)")
    ws = memory.get("switchyard", {}).get("per_ws_kb")
    # A negative figure means RSS fell meanwhile (the allocator returned
    # memory): not a measurement, so not a PASS.
    check(rows, "S5 memory per idle WebSocket", "<= 4 KB", ws, ws is not None and 0 <= ws * 1.024 <= 4,
          (f"{ws * 1.024:.1f} KB" + (" (RSS fell meanwhile: not measured)" if ws < 0 else "")) if ws is not None else "")
    one = _get(summary, "S6", "switchyard-1-routes", "cpu_us")
    many = _get(summary, "S6", "switchyard-10000-routes", "cpu_us")
    if one and many:
        check(rows, "S6 CPU per request, 10,000 vs 1 route", "<= +2%", many, many <= 1.02 * one,
              f"{(many / one - 1) * 100:+.1f}% ({many:.1f} vs {one:.1f} us)")
    mem = extra.get("S6", {})
    if 1 in mem and 10000 in mem:
        per_route = (mem[10000]["idle_rss_kb"] - mem[1]["idle_rss_kb"]) * 1.024 / 9999
        note = ""
        if "ready_rss_kb" in mem[10000] and "ready_rss_kb" in mem[1]:
            at_ready = (mem[10000]["ready_rss_kb"] - mem[1]["ready_rss_kb"]) * 1.024 / 9999
            note = f" idle ({at_ready:.2f} KB when first serving)"
        check(rows, "S6 memory per route", "<= 2 KB", per_route, per_route <= 2, f"{per_route:.2f} KB{note}")
    steady, churning = g("S7", "switchyard-steady", "p99_ms"), g("S7", "switchyard-churn", "p99_ms")
    if steady and churning:
        errors = g("S7", "switchyard-churn", "errors")
        check(rows, "S7 endpoint churn", "zero errors; p99 <= 1.1 x no churn", churning,
              errors == 0 and churning <= 1.1 * steady,
              f"{errors} errors; p99 {churning:.2f} ms vs {steady:.2f} ms steady ({churning / steady:.2f}x)")
    else:
        rows.append({"target": "S7 endpoint churn", "goal": "zero errors; p99 <= 1.1 x no churn",
                     "measured": "not measured in this run", "result": "NOT RUN"})
    s8 = extra.get("S8", {})
    if 5000 in s8:
        r = s8[5000]
        worst = r["max_ms"]
        check(rows, "S8 route change to first 200, 5,000 Ingresses (standalone)", "<= 30 ms (worst trial)", worst,
              worst is not None and worst <= 30 and r["served"] == r["trials"],
              f"worst {worst:.1f} ms, median {r['p50_ms']:.1f} ms over {r['served']}/{r['trials']}"
              if worst is not None else "never served")
        check(rows, "S8 errors during the change", "zero", r["errors"], r["errors"] == 0, f"{r['errors']}")
    s8api = extra.get("S8-API") or {}
    r = s8api.get(5000, s8api.get("5000"))  # (keys are strings once read back from JSON)
    name, goal = "S8 through the API server, 5,000 Ingresses", "<= 100 ms (worst trial)"
    if r is not None:
        worst = r["max_ms"]
        check(rows, name, goal, worst, worst is not None and worst <= 100 and r["served"] == r["trials"],
              f"worst {worst:.1f} ms, median {r['p50_ms']:.1f} ms over {r['served']}/{r['trials']}"
              if worst is not None else "never served")
        check(rows, "S8 through the API server: errors during the change", "zero", r["errors"], r["errors"] == 0,
              f"{r['errors']}")
    elif extra.get("S8-API-skipped"):
        rows.append({"target": name, "goal": goal, "measured": f"skipped ({extra['S8-API-skipped']})",
                     "result": "NOT RUN"})
    else:
        check(rows, name, goal, None, False, "")
    idle = memory.get("switchyard", {}).get("idle_rss_kb")
    if idle:
        check(rows, "S9 idle RSS", "<= 16 MB", idle, idle / 1024 <= 16, f"{idle / 1024:.1f} MiB")
    pc = memory.get("switchyard", {}).get("per_conn_kb")
    check(rows, "S9 memory per idle keep-alive connection", "<= 4 KB", pc, pc is not None and 0 <= pc * 1.024 <= 4,
          (f"{pc * 1.024:.2f} KB" + (" (RSS fell meanwhile: not measured)" if pc < 0 else "")) if pc is not None else "")
    return rows


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return ""


def build(args, suite):
    for r in suite.runs:
        r["connections"] = args.connections
    summary = summarize(suite.runs)
    add_ratios(summary)
    extra = suite.extra
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.machine()}",
        "commit": _git("rev-parse", "--short", "HEAD") + (" (dirty)" if _git("status", "--porcelain") else ""),
        # Set by bench.sh: which build of switchyard ran (deploy/build.sh).
        "build": os.environ.get("SWITCHYARD_BUILD", "not said (suite.py run directly)"),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "connections": args.connections,
        "scenarios": SCENARIOS,
        "summary": summary,
        "memory": suite.memory,
        "extra": {k: v for k, v in extra.items()},
        "targets": targets(summary, suite.memory, extra),
        "runs": suite.runs,
    }


def _s8api_setup(r):
    """How long the Ingresses of one S8-through-the-API-server size took to
    create and to be served, and the controller's share of each trial."""
    prop = [t["propagation_ms"] for t in r.get("per_trial", []) if t.get("propagation_ms") is not None]
    text = ""
    if r.get("create_s") is not None:
        text += f" (created in {r['create_s']:.1f} s, the last served {r['served_s']:.2f} s after its POST"
        if r.get("status_s") is not None:
            text += f", every status written after {r['status_s']:.1f} s"
        text += ")"
    if prop:
        text += f"; watch event to snapshot live {min(prop):.0f} to {max(prop):.0f} ms"
    return text


def _fmt(x, spec):
    if x is None:
        return format("-", ">" + spec.split(".")[0])
    return format(x, spec)


def print_all(res):
    print(f"\nSwitchyard benchmark  {res['date']}  {res['machine']}  commit {res['commit']}"
          f"  build: {res.get('build', 'not recorded')}")
    print(f"{res['rounds']} round(s) x {res['duration_s']} s, {res['connections']} connections; medians over rounds; "
          "ratios: switchyard / best of nginx and HAProxy")
    for scenario, desc in res["scenarios"].items():
        by_target = res["summary"].get(scenario)
        if not by_target:
            continue
        print(f"\n{scenario}: {desc}")
        print(f"  {'target':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'RSS MB':>9}"
              f"{'errors':>8}   vs best peer")
        for name, s in by_target.items():
            ratio = s.get("vs_best_peer", {}) if name == "switchyard" else {}
            rtxt = "  ".join(f"{k.replace('_ms', '').replace('_us', '').replace('_mb', '')} {v:.2f}x"
                             for k, v in ratio.items())
            extra = ""
            if "upstream_reuse" in s and name != "direct":
                extra = f"  upstream reuse {s['upstream_reuse'] * 100:.2f}%"
            print(f"  {name:<26}{_fmt(s['rps'], '10.0f')}{_fmt(s['p50_ms'], '9.3f')}{_fmt(s['p99_ms'], '9.3f')}"
                  f"{_fmt(s['cpu_us'], '12.1f')}{_fmt(s['rss_mb'], '9.1f')}{s['errors']:>8}   {rtxt}{extra}")
    some = next(iter(res["memory"].values()), {})
    print(f"\nMemory (RSS; nginx counts master + worker; {some.get('idle_conns', '-')} idle keep-alive connections, "
          f"{some.get('idle_websockets', '-')} idle WebSockets)")
    print(f"  {'target':<12}{'idle MiB':>10}{'KiB/idle conn':>15}{'KiB/idle WebSocket':>20}")
    for name, m in res["memory"].items():
        print(f"  {name:<12}{_fmt(m.get('idle_rss_kb', 0) / 1024, '10.1f')}{_fmt(m.get('per_conn_kb'), '15.2f')}"
              f"{_fmt(m.get('per_ws_kb'), '20.2f')}")
    s6 = res["extra"].get("S6", {})
    if s6:
        print("  switchyard idle RSS by route count: " +
              ", ".join(f"{n}: {v['idle_rss_kb'] / 1024:.1f} MiB" for n, v in s6.items()))
    for n, r in res["extra"].get("S8", {}).items():
        print(f"  S8 {n} Ingresses: route change to first 200 {r['latencies_ms']} ms; errors meanwhile {r['errors']}")
    for n, r in res["extra"].get("S8-API", {}).items():
        print(f"  S8 through the API server, {n} Ingresses: POST to first 200 {r['latencies_ms']} ms; "
              f"errors meanwhile {r['errors']}{_s8api_setup(r)}")
    if res["extra"].get("S8-API-elapsed_s") is not None:
        print(f"  S8 through the API server: the phase took {res['extra']['S8-API-elapsed_s']:.0f} s "
              "(control plane start, Ingresses, trials, teardown)")
    print("\nTargets (issue 8)")
    for row in res["targets"]:
        print(f"  {row['result']:<8} {row['target']:<58} goal {row['goal']:<26} measured {row['measured']}")
    print("  (MISS = target not met on this run; the suite fails only on errors, never on a MISS)")
    print(f"\nelapsed {res['extra'].get('elapsed_s', 0):.0f} s")


def markdown(res):
    """The results as Markdown tables, for docs/performance.md."""
    lines = [f"Run of {res['date'][:10]} on {res['machine']} (a 2-core VM), commit {res['commit']} "
             f"({res.get('build', 'build not recorded')}); "
             f"{res['rounds']} rounds x {res['duration_s']} s, {res['connections']} connections, medians over rounds. "
             "Ratio: switchyard / best of nginx and HAProxy.", "",
             "| scenario | target | req/s | p50 ms | p99 ms | CPU µs/req | RSS MB | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scenario in res["scenarios"]:
        for name, s in res["summary"].get(scenario, {}).items():
            cells = [_fmt(s["rps"], ".0f"), _fmt(s["p50_ms"], ".3f"), _fmt(s["p99_ms"], ".3f"),
                     _fmt(s["cpu_us"], ".1f"), _fmt(s["rss_mb"], ".1f"), str(s["errors"])]
            cells = [c.strip() for c in cells]
            if name == "switchyard" and s.get("vs_best_peer"):
                r = s["vs_best_peer"]
                for i, key in ((0, "rps"), (2, "p99_ms"), (3, "cpu_us")):
                    if key in r:
                        cells[i] += f" ({r[key]:.2f}x)"
            if "upstream_reuse" in s and name != "direct":
                cells[5] += f"; reuse {s['upstream_reuse'] * 100:.2f}%"
            lines.append(f"| {scenario} | {name} | " + " | ".join(cells) + " |")
    some = next(iter(res["memory"].values()), {})
    lines += ["", f"Memory ({some.get('idle_conns')} idle keep-alive connections, "
              f"{some.get('idle_websockets')} idle WebSockets):", "",
              "| target | idle RSS MiB | KiB per idle connection | KiB per idle WebSocket |", "|---|---:|---:|---:|"]
    for name, m in res["memory"].items():
        lines.append(f"| {name} | {m.get('idle_rss_kb', 0) / 1024:.1f} | {_fmt(m.get('per_conn_kb'), '.2f').strip()} | "
                     f"{_fmt(m.get('per_ws_kb'), '.2f').strip()} |")
    s6 = res["extra"].get("S6", {})
    if s6:
        lines += ["", "switchyard idle RSS by route count: " +
                  ", ".join(f"{n}: {v['idle_rss_kb'] / 1024:.1f} MiB" for n, v in s6.items()) + "."]
    for n, r in res["extra"].get("S8", {}).items():
        lines.append(f"S8, {n} Ingresses: route change to first 200 in {r['latencies_ms']} ms; "
                     f"{r['errors']} errors meanwhile.")
    for n, r in res["extra"].get("S8-API", {}).items():
        lines.append(f"S8 through the API server, {n} Ingresses: POST to first 200 in {r['latencies_ms']} ms; "
                     f"{r['errors']} errors meanwhile{_s8api_setup(r)}.")
    if res["extra"].get("S8-API-elapsed_s") is not None:
        lines.append(f"S8 through the API server: the phase took {res['extra']['S8-API-elapsed_s']:.0f} s "
                     "(control plane start, Ingresses, trials, teardown).")
    lines += ["", "| target (issue 8) | goal | measured | result |", "|---|---|---|---|"]
    for row in res["targets"]:
        lines.append(f"| {row['target']} | {row['goal']} | {row['measured']} | {row['result']} |")
    lines.append(f"\nThe run took {res['extra'].get('elapsed_s', 0) / 60:.1f} minutes (plus the build).")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    print(markdown(json.load(open(sys.argv[1]))))
