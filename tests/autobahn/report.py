"""Compares the Autobahn verdicts through the gateway with the direct ones; prints a summary
and writes docs/conformance.md.

A case passes when its verdict through the gateway (behavior and behaviorClose) equals the
direct connection's to the same peer, and both parts are OK, NON-STRICT or INFORMATIONAL.
A case the reference peer itself fails (same verdict both ways) is accepted only if it is
listed in known-backend-failures.txt. A case with no verdict, on either side, fails.

One difference is timing, not behaviour: in the cases whose expectation lists both OK and
NON-STRICT (3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15, 6.4.*, 7.1.6), NON-STRICT only means
that the peer failed the connection before the echo of the valid message sent just before
the violation got out, or noticed invalid UTF-8 a little later. The direct connection itself
flips between the two from run to run (4.1.5 did), so an OK through the gateway against a
NON-STRICT directly, or the reverse, with the same close behavior, counts as "same up to
timing": passing, and listed.

With harness.py --tls the gateway's agent is "gateway-tls" (its clients reach it over
wss://) and the document says so: its own title, paths and a TLS section (what each client
negotiated); docs/conformance-tls.md is that document, docs/conformance.md the plaintext one.

Run by harness.py; to redo the table from the reports of an earlier run:

    python report.py --out target/autobahn [--doc docs/conformance.md]
"""

import argparse
import html
import json
import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
RANK = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2}
GROUPS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
MODES = {
    "fuzzingclient": "wstest fuzzingclient → gateway → echo backend",
    "fuzzingserver": "echo client → gateway → wstest fuzzingserver",
}


def case_key(case):
    return tuple(int(x) for x in case.split("."))


def load_mode(out, mode):
    """{agent: {case: (entry, report folder)}} from every index.json of the mode."""
    results = defaultdict(dict)
    for index in sorted((out / "reports" / mode).rglob("index.json")):
        for agent, cases in json.loads(index.read_text()).items():
            for case, entry in cases.items():
                results[agent][case] = (entry, index.parent)
    return results


def case_report(item):
    if item is None:
        return None
    entry, folder = item
    try:
        return json.loads((folder / entry["reportfile"]).read_text())
    except (OSError, ValueError, KeyError):
        return {}


def verdict(item):
    if item is None:
        return None
    entry, _ = item
    return (entry["behavior"], entry["behaviorClose"])


def show(v):
    if v is None:
        return "no verdict"
    return v[0] if v[0] == v[1] else f"{v[0]} / {v[1]}"


def passing(v):
    return v is not None and v[0] in PASSING and v[1] in PASSING


def category(v):
    if not passing(v):
        return "failed"
    return max(v, key=lambda x: RANK[x])


def timing_only(gv, dv, g_item):
    if gv[1] != dv[1] or {gv[0], dv[0]} != {"OK", "NON-STRICT"}:
        return False
    expected = (case_report(g_item) or {}).get("expected") or {}
    return "OK" in expected and "NON-STRICT" in expected


ACCEPTED = ("same", "same up to timing", "same, backend limitation")


def close_story(rep):
    if rep is None:
        return "no verdict"
    if rep.get("remoteCloseCode") is not None:
        s = f"close {rep['remoteCloseCode']}"
        if rep.get("remoteCloseReason"):
            s += f" “{rep['remoteCloseReason'][:40]}”"
    else:
        s = "no close frame"
    if rep.get("wasOpenHandshakeTimeout"):
        s += ", opening handshake timed out"
    if not rep.get("wasClean") and rep.get("wasNotCleanReason"):
        s += f", {rep['wasNotCleanReason']}"
    return s


def what_happened(g_item, d_item):
    g, d = case_report(g_item), case_report(d_item)
    if g is None:
        return "no verdict through the gateway (run cut short, or the connection failed)"
    if d is None:
        return "no direct verdict to compare with"
    parts = []
    gv, dv = verdict(g_item), verdict(d_item)
    if gv[0] != dv[0] or gv[0] not in PASSING:
        got, want = len(g.get("received") or []), len(d.get("received") or [])
        part = f"the fuzzer got {got} messages/pongs back (direct {want})"
        if gv[0] not in PASSING and g.get("result"):
            part += f": {g['result']}"
        parts.append(part)
    if gv[1] != dv[1] or gv[1] not in PASSING:
        part = f"{close_story(g)} (direct: {close_story(d)})"
        if gv[1] not in PASSING and g.get("resultClose"):
            part += f"; {g['resultClose']}"
        parts.append(part)
    if not parts:
        parts.append(f"{close_story(g)}, as direct")
    return "; ".join(parts) + f"; {g_item[0].get('duration', '?')} ms"


def describe(item):
    rep = case_report(item) or {}
    text = html.unescape(re.sub(r"<[^>]+>", "", rep.get("description") or ""))
    return text if len(text) <= 90 else text[:87] + "…"


def load_known(path):
    known = {}
    if path and Path(path).exists():
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                mode, case, *why = line.split(None, 2)
                known[(mode, case)] = why[0] if why else ""
    return known


def git(*argv):
    try:
        return subprocess.run(
            ["git", *argv], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def md(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def main_with(out, modes, expected, runs, doc, known, full_deflate, meta=None,
              gateway_agent="gateway", tls=None):
    """Compares, prints, writes `doc`; returns the exit status. `tls` (what each client
    negotiated, by client) marks a run whose clients reached the gateway over wss://."""
    out = Path(out)
    known = load_known(known)
    if meta is None:
        path = out / "meta.json"
        meta = json.loads(path.read_text()) if path.exists() else {}
    all_cases = sorted({c for cases in expected.values() for c in cases}, key=case_key)
    rows = []  # (mode, case, direct verdict, gateway verdict, outcome, g item, d item)
    for mode in modes:
        results = load_mode(out, mode)
        direct, gateway = results.get("direct", {}), results.get(gateway_agent, {})
        for case in all_cases:
            d, g = direct.get(case), gateway.get(case)
            dv, gv = verdict(d), verdict(g)
            if dv is None:
                outcome = "no direct verdict"
            elif gv is None:
                outcome = "no gateway verdict"
            elif gv != dv and timing_only(gv, dv, g):
                outcome = "same up to timing"
            elif gv != dv:
                outcome = "differs"
            elif passing(gv):
                outcome = "same"
            elif (mode, case) in known or ("*", case) in known:
                outcome = "same, backend limitation"
            else:
                outcome = "same, failing"
            rows.append((mode, case, dv, gv, outcome, g, d))

    bad = [r for r in rows if r[4] not in ACCEPTED]
    failed_runs = [r for r in runs if r["status"] != 0]

    # Per mode and case group.
    table = []
    for mode in modes:
        by_group = defaultdict(list)
        for r in rows:
            if r[0] == mode:
                by_group[r[1].split(".")[0]].append(r)
        for group in sorted(by_group, key=int):
            rs = by_group[group]
            cats = Counter(category(r[3]) for r in rs)
            same = sum(r[4] in ("same", "same, backend limitation") for r in rs)
            timing = sum(r[4] == "same up to timing" for r in rs)
            table.append(
                (mode, f"{group} {GROUPS.get(group, '')}".strip(), len(rs), cats["OK"],
                 cats["NON-STRICT"], cats["INFORMATIONAL"], cats["failed"], same, timing,
                 len(rs) - same - timing)
            )

    # Console.
    head = ("mode", "group", "cases", "OK", "NON-STRICT", "INFO", "failed", "same", "timing",
            "differs")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)] if table else []
    print()
    hop = " over wss://" if tls is not None else ""
    print(f"Verdicts through the gateway{hop} (same, timing, differs: against the direct "
          "connection)")
    for line in [head] + table:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    notable = [r for r in rows if r[4] != "same"]
    if notable:
        print()
        print("Cases that are not plainly the same as on the direct connection:")
        for mode, case, dv, gv, outcome, g, d in sorted(
            notable, key=lambda r: (r[0], case_key(r[1]))
        ):
            print(f"  {mode:13} {case:8} direct {show(dv):26} gateway {show(gv):26} {outcome}")
            if outcome not in ("same, backend limitation",):
                print(f"  {'':13} {'':8} {what_happened(g, d)}")
    for r in failed_runs:
        print(f"run {r['mode']} {r['suite']} {r['agent']}: status {r['status']} "
              f"after {r['seconds']} s (limit {r['limit']} s)")
    ok = not bad and not failed_runs
    print()
    print(
        f"autobahn: {'PASS' if ok else 'FAIL'}: {len(rows)} case runs through the gateway{hop}, "
        f"{sum(r[4] in ('differs', 'no gateway verdict', 'no direct verdict') for r in rows)} "
        f"without the direct verdict, {sum(r[4] == 'same, failing' for r in rows)} failing "
        f"both ways, {len(failed_runs)} runs cut short"
    )

    if doc:
        write_doc(Path(doc), modes, expected, rows, table, runs, known, full_deflate, meta, ok,
                  tls)
        print(f"autobahn: wrote {doc}")
    return 0 if ok else 1


def write_doc(doc, modes, expected, rows, table, runs, known, full_deflate, meta, ok,
              tls=None):
    commit = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    lines = []
    w = lines.append
    if tls is None:
        w("# WebSocket conformance (Autobahn|Testsuite)")
    else:
        w("# WebSocket conformance over wss:// (Autobahn|Testsuite through the TLS gateway)")
    w("")
    w("<!-- Written by tests/autobahn/run.sh; edit tests/autobahn/report.py instead. -->")
    w("")
    w("The gateway relays WebSocket frames unchanged, so a peer should get exactly the")
    w("verdicts through it that it gets on a direct connection. This run checks that with")
    if tls is None:
        w("[Autobahn|Testsuite](https://github.com/crossbario/autobahn-testsuite), both ways:")
    else:
        w("[Autobahn|Testsuite](https://github.com/crossbario/autobahn-testsuite), both ways,")
        w("here with the client-to-gateway hop in TLS. The gateway serves `wss://` (rustls; every")
        w("client here negotiates TLS 1.3 with it, see [TLS](#tls)) with certificates made by the")
        w("run; its hop to the backend, and the direct reference connection, stay plaintext")
        w("`ws://`. So a case passes when its verdict through the TLS gateway (agent")
        w("`gateway-tls`) is the one the same peer gets on a plaintext direct connection. The")
        w("plaintext run through the gateway is [conformance.md](conformance.md).")
    w("")
    hop = " →wss→ gateway →ws→ " if tls is not None else " → gateway → "
    w("| mode | path | what it tests |")
    w("|---|---|---|")
    w(f"| fuzzingclient | `wstest -m fuzzingclient`{hop}echo backend | client-to-backend frames, the backend's answers back |")
    w(f"| fuzzingserver | echo client{hop}`wstest -m fuzzingserver` | backend-to-client frames, the client's answers back |")
    w("")
    w("Each mode also runs without the gateway (agent `direct`"
      + (", plaintext" if tls is not None else "") + ") for the reference verdicts. A")
    w("case passes when its verdict through the gateway (behavior and close behavior) is the")
    w("direct one and is OK, NON-STRICT or INFORMATIONAL. A case the reference peer fails")
    w("directly too is accepted only when `tests/autobahn/known-backend-failures.txt` lists it.")
    w("One difference is allowed as timing, not behaviour (\"same up to timing\"): OK on one")
    w("side and NON-STRICT on the other, with the same close behavior, in a case whose")
    w("expectation lists both (3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15, 6.4.*, 7.1.6). There")
    w("NON-STRICT only means that the peer failed the connection before the echo of the valid")
    w("message sent just before the violation got out (or noticed bad UTF-8 a little later);")
    w("the direct connection itself flips between the two from run to run.")
    w("")
    w("## Result")
    w("")
    at = f"`{commit}`" + (" with uncommitted changes" if dirty else "") if commit else "this tree"
    nbad = sum(r[4] not in ACCEPTED for r in rows)
    short = [r for r in runs if r["status"] != 0]
    w(f"**{'PASS' if ok else 'FAIL'}** at {at}: {len(rows)} case runs through the gateway"
      + (" over `wss://`" if tls is not None else "") + ", "
      f"{nbad} that differ from the direct connection or fail"
      + (f", {len(short)} runs cut short by their time limit" if short else "") + ".")
    w("")
    versions = ", ".join(f"{k} {v}" for k, v in meta.items() if v)
    if versions:
        w(f"Versions: {versions}.")
        w("")
    w("| mode | case group | cases | OK | NON-STRICT | INFORMATIONAL | failed | same as direct | same up to timing | differs |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for t in table:
        w("| " + " | ".join(md(x) for x in t) + " |")
    w("")
    w("Counts are the verdicts through the gateway; a case counts under its worse part")
    w("(behavior or close behavior).")
    w("")
    if tls is not None:
        write_tls(w, modes, tls)
    w("## Cases that differ or are not OK")
    w("")
    notable = sorted((r for r in rows if r[4] != "same" or r[3] != ("OK", "OK")),
                     key=lambda r: (r[0], case_key(r[1])))
    if not notable:
        w("None: every case is OK both ways.")
    else:
        w("| mode | case | direct | through the gateway | outcome | what happened through the gateway (or, when the same, the case) |")
        w("|---|---|---|---|---|---|")
        for mode, case, dv, gv, outcome, g, d in notable:
            if outcome == "same, backend limitation":
                why = known.get((mode, case)) or known.get(("*", case), "")
                story = f"the reference peer fails it directly too: {why}"
            elif outcome == "same":
                story = describe(g or d)
            else:
                story = what_happened(g, d)
            w(f"| {mode} | {case} | {md(show(dv))} | {md(show(gv))} | {md(outcome)} | {md(story)} |")
    w("")
    w("## Runs")
    w("")
    w("| mode | cases | agent | seconds | status |")
    w("|---|---|---|--:|---|")
    for r in runs:
        status = "ok" if r["status"] == 0 else f"{r['status']} (limit {r['limit']} s)"
        w(f"| {r['mode']} | {r['suite']} | {r['agent']} | {r['seconds']} | {status} |")
    w("")
    w("Case selections: core is 1.* to 7.* and 10.*, perf is 9.*, deflate is ")
    if full_deflate:
        w("all of 12.* and 13.*.")
    else:
        w("12.* and 13.* reduced to 4 cases in each of their 12 subgroups (`.1` 16 B, `.5` 4 KiB")
        w("and `.8` 32 KiB messages in one frame, `.13` 32 KiB in 256-byte frames), 48 of 216:")
        w("the full set takes about 7.5 minutes per agent and mode. `--full-deflate` runs them all.")
    w("")
    w("## How to run")
    w("")
    w("```sh")
    if tls is None:
        w("bash tests/autobahn/run.sh                     # install if missing, build, run, write this file")
        w("AUTOBAHN_ARGS='--suites core --modes fuzzingclient' bash tests/autobahn/run.sh   # a part")
        w("AUTOBAHN_ARGS=--full-deflate bash tests/autobahn/run.sh                         # all of 12.*, 13.*")
    else:
        w("# install if missing, build, run, write this file:")
        w("AUTOBAHN_ARGS=--tls AUTOBAHN_OUT=target/autobahn-tls AUTOBAHN_DOC=docs/conformance-tls.md \\")
        w("  bash tests/autobahn/run.sh")
        w("# what CI runs (1.* to 10.*, both modes):")
        w("AUTOBAHN_ARGS='--tls --suites core,perf' AUTOBAHN_OUT=target/autobahn-tls \\")
        w("  AUTOBAHN_DOC=target/autobahn-tls/conformance-tls.md bash tests/autobahn/run.sh")
    w("```")
    w("")
    if tls is None:
        w("`.ci/run` runs it as its last step. The first run installs wstest (autobahntestsuite, Python")
    else:
        w("`.ci/run` runs its `core,perf` part (every case of 1.* to 10.*, both modes) after the")
        w("plaintext run, and fails on any verdict through the TLS gateway that differs from the")
        w("direct one or fails. The first run installs wstest (autobahntestsuite, Python")
    out = "target/autobahn-tls" if tls is not None else "target/autobahn"
    w("2.7 from pyenv, every dependency pinned in `tests/autobahn/requirements-py2.txt`) and")
    w("`websockets` (Python 3) into `/opt/wscluster-autobahn` (`AUTOBAHN_HOME`), in about half a")
    w("minute; later runs reuse it. Reports (Autobahn's JSON and HTML per case) and every")
    w(f"process's log go to `{out}/` (`AUTOBAHN_OUT`); `python3")
    w(f"tests/autobahn/report.py --out {out}` redoes the table from them.")
    w("")
    w("Setup, all on loopback: the echo backend echoes every message; for 1.* to 10.* it is")
    w("`wsecho server` (`tools/src/bin/wsecho.rs`, tokio-tungstenite), for 12.* and 13.*")
    w("`tests/autobahn/echo_server.py` (websockets), which negotiates permessage-deflate, so those")
    w("frames cross the gateway compressed; each has its own gateway in front of it. `wstest -m")
    w("echoserver` cannot be the backend, as it refuses a Host header other than its own. The")
    w("gateways run `run --backend …` with `[routing] missing_key = \"random\"`, since Autobahn's")
    w("URLs carry no routing key. In the fuzzingserver mode the echo client (`wsecho client` for")
    w("1.* to 10.*, `tests/autobahn/echo_client.py` for the rest) opens its TCP connection to")
    w("the gateway but keeps the fuzzing server's URL, so the Host header names the fuzzing")
    w("server's port, which Autobahn checks (it listens on every address, so the gateway cannot")
    w("take the same port on another loopback address). The echo client abandons a case after")
    w("4 s without a frame (the fuzzing server has judged it by then).")
    w("")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))


def write_tls(w, modes, tls):
    """The TLS section: the certificates, and how each client reached the gateway."""
    w("## TLS")
    w("")
    w("The run makes its certificates with openssl: a test CA and an ECDSA P-256 leaf for IP")
    w("127.0.0.1 (`subjectAltName IP:127.0.0.1`, `CA:FALSE`), which the gateways serve with")
    w("`--tls-cert leaf-chain.pem --tls-key leaf.key`. Every client trusts that CA alone and")
    w("checks the chain and the address, so a case connection is a verified TLS session:")
    w("")
    w("| mode | client | TLS stack | negotiated |")
    w("|---|---|---|---|")
    if "fuzzingclient" in modes:
        w("| fuzzingclient | `wstest -m fuzzingclient` itself, to `wss://127.0.0.1:port` | "
          "Twisted and pyOpenSSL; its server entry's `\"hostname\": \"127.0.0.1\"` selects "
          "`optionsForClientTLS` (the name checked by service_identity), trusting "
          "`SSL_CERT_FILE=ca.pem` | "
          + md(tls.get("wstest -m fuzzingclient", "not recorded")) + " |")
    if "fuzzingserver" in modes:
        w("| fuzzingserver | `wsecho client --connect-ca ca.pem` (1.* to 10.*) | rustls, the "
          "gateway's own TLS library (`tools/src/tls.rs`) | TLS 1.3 (rustls on both ends, both "
          "offering it; not logged) |")
        if tls.get("echo_client.py"):
            w("| fuzzingserver | `echo_client.py --via-ca ca.pem` (12.*, 13.*) | Python's `ssl`, "
              "`create_default_context(cafile=ca.pem)` | " + md(tls["echo_client.py"]) + " |")
    w("")
    if "fuzzingclient" in modes:
        w("wstest speaks TLS itself here: no proxy originates the TLS of the fuzzing client. Its")
        w("line was measured before the run by `tests/autobahn/wstest_tls_probe.py`, which makes")
        w("the fuzzing client's handshake with its own settings (and stops the run if it fails).")
    if "fuzzingserver" in modes:
        w("The echo clients keep the fuzzing server's `ws://` URL, and so its Host header, while")
        w("their TCP connection, in TLS, goes to the gateway.")
    w("")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--doc")
    args = parser.parse_args()
    out = Path(args.out)
    state = json.loads((out / "expected.json").read_text())
    runs = json.loads((out / "runs.json").read_text())
    return main_with(
        out=out,
        modes=state["modes"],
        expected=state["expected"],
        runs=runs,
        doc=Path(args.doc) if args.doc else None,
        known=Path(__file__).resolve().parent / "known-backend-failures.txt",
        full_deflate=state["full_deflate"],
        gateway_agent=state.get("gateway_agent", "gateway"),
        tls=state.get("tls"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
