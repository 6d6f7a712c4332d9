"""Runs Autobahn|Testsuite through the gateway and directly, and compares the verdicts.

Started by run.sh (which installs wstest and builds the gateway first); all on loopback:

  fuzzingclient  wstest -m fuzzingclient -> echo backend             (agent "direct")
                 wstest -m fuzzingclient -> gateway -> echo backend  (agent "gateway")
  fuzzingserver  echo client -> wstest -m fuzzingserver              (agent "direct")
                 echo client -> gateway -> wstest -m fuzzingserver   (agent "gateway")

For 1.* to 10.* the echo backend and the echo client are `wsecho server` and `wsecho
client` (tools/src/bin/wsecho.rs, tokio-tungstenite, which passes them all directly);
for 12.* and 13.* they are Python 3 `websockets` (echo_server.py, echo_client.py), which
negotiates permessage-deflate, so those cases pass compressed frames through the gateway both
ways. Each backend has its own gateway in front of it; in the fuzzingserver mode the two
clients share the fuzzing server's case numbers (wsecho the first ones, 1.* to 10.*).
Without --wsecho the Python peers run every case. In the fuzzingserver mode the client connects to the
gateway but keeps the fuzzing server's URL, hence its Host header: Autobahn fails a
handshake whose Host port is not its own listening port, and it listens on every address,
so the gateway cannot take the same port on another loopback address.

With --tls the client-to-gateway hop is wss:// (TLS, rustls in the gateway) and the gateway's
agent is "gateway-tls"; the direct runs, and the gateway's hop to its backend, stay
plaintext, so the comparison is "the same verdicts through the TLS gateway as directly".
The certificates are made here, in OUT/tls, with openssl: a test CA and an ECDSA P-256 leaf
for IP 127.0.0.1 (not a CA), served with `--tls-cert leaf-chain.pem --tls-key leaf.key`.
Every client checks them: wstest's fuzzing client gets a "hostname" in its server entry,
which makes it connect with Twisted's optionsForClientTLS (pyOpenSSL; trust from
SSL_CERT_FILE, set to ca.pem; the IP checked by service_identity), and wstest_tls_probe.py
makes that same handshake once first, to fail early and write down the protocol and cipher;
`wsecho client --connect-ca ca.pem` (rustls) and `echo_client.py --via-ca ca.pem` (Python's
ssl) open their case connections in TLS, still with the fuzzing server's URL.

Each wstest run and each echo-client run has its own time limit; a run that hits it leaves
its cases without a verdict, which counts as a failure. Every process started here is
stopped at the end, also on SIGTERM (run.sh's overall `timeout`); their ids are kept in
OUT/pids for run.sh's trap.

    python harness.py --gateway target/release/gateway-bin --wstest .../py2/bin/wstest \
        --wsecho target/release/wsecho --out target/autobahn --doc docs/conformance.md
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import report

HERE = Path(__file__).resolve().parent

# 12.* and 13.* take about 7.5 minutes per agent and mode in full (216 cases, each 1000
# messages); by default each of their 12 subgroups runs 4 cases: 16 B, 4 KiB and 32 KiB
# messages in one frame, and 32 KiB split into 256-byte frames (a compressed message in
# continuation frames).
DEFLATE_SUBGROUPS = [f"12.{i}" for i in range(1, 6)] + [f"13.{i}" for i in range(1, 8)]
DEFLATE_SUBSET = [f"{g}.{n}" for g in DEFLATE_SUBGROUPS for n in (1, 5, 8, 13)]

SUITES = {
    "core": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"],
    "perf": ["9.*"],
    "deflate": DEFLATE_SUBSET,
}
FULL_DEFLATE = ["12.*", "13.*"]
# The suites whose echo peer is wsecho (when given); the others need permessage-deflate.
WSECHO_SUITES = {"core", "perf"}


def uses_wsecho(case):
    """Whether wsecho is the echo peer of this case id (1.* to 10.*)."""
    return int(case.split(".")[0]) <= 10


def crate_version(name):
    """The version of a crate in the workspace's Cargo.lock, or "?"."""
    lock = HERE.parent.parent / "Cargo.lock"
    try:
        blocks = lock.read_text().split("[[package]]")
    except OSError:
        return "?"
    for block in blocks:
        if f'\nname = "{name}"\n' in block:
            for line in block.splitlines():
                if line.startswith("version = "):
                    return line.split('"')[1]
    return "?"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Processes:
    """Every long-running process of the run, each in its own session, stopped by its id."""

    def __init__(self, pidfile):
        self.procs = []
        self.pidfile = pidfile

    def start(self, name, argv, logfile, cwd=None, env=None):
        out = open(logfile, "wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, proc))
        with open(self.pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def stop_all(self):
        for _, proc in reversed(self.procs):
            self.stop(proc)
        self.procs = []


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port, proc, name, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{name} is not listening on 127.0.0.1:{port} after {seconds} s")


def run_bounded(procs, name, argv, logfile, seconds, cwd=None, env=None):
    """Runs argv to its end or for at most `seconds`; returns (status, elapsed)."""
    started = time.monotonic()
    proc = procs.start(name, argv, logfile, cwd=cwd, env=env)
    try:
        status = proc.wait(seconds)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        status = "timeout"
    return status, time.monotonic() - started


def make_certs(folder):
    """A test CA and a leaf for IP 127.0.0.1 signed by it, made with openssl; returns the
    paths of ca.pem, leaf-chain.pem (leaf then CA) and leaf.key."""
    if subprocess.run(["sh", "-c", "command -v openssl"], capture_output=True).returncode:
        raise SystemExit("--tls needs openssl (Debian: apt-get install openssl)")
    if folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    folder.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def openssl(*argv):
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=wscluster Autobahn test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-new", *ec, "-keyout", "leaf.key", "-out", "leaf.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "leaf.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")
    openssl("verify", "-CAfile", "ca.pem", "-verify_ip", "127.0.0.1", "leaf.pem")
    chain = folder / "leaf-chain.pem"
    chain.write_text((folder / "leaf.pem").read_text() + (folder / "ca.pem").read_text())
    return folder / "ca.pem", chain, folder / "leaf.key"


def wstest_tls(wstest, port, env):
    """The protocol and cipher wstest's fuzzing client gets from the gateway on `port`
    (wstest_tls_probe.py, in wstest's Python); the run stops here if it cannot connect."""
    python = Path(wstest).parent / "python"
    probe = subprocess.run(
        [str(python), str(HERE / "wstest_tls_probe.py"), "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    if probe.returncode:
        raise SystemExit(f"wstest's TLS client cannot use the gateway on :{port}: "
                         f"{probe.stderr.strip().splitlines()[-1:]}")
    return probe.stdout.strip()


def expand_cases(wstest, patterns):
    """The case ids wstest runs for these patterns, in its order."""
    python = Path(wstest).parent / "python"
    code = (
        "import json, sys\n"
        "from autobahntestsuite.case import Cases, CaseSetname, CaseBasename, "
        "CaseCategories, CaseSubCategories\n"
        "from autobahntestsuite.caseset import CaseSet\n"
        "s = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)\n"
        "print(json.dumps(s.parseSpecCases({'cases': json.loads(sys.argv[1])})))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code, json.dumps(patterns)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway-bin binary")
    parser.add_argument("--wstest", required=True, help="wstest in its Python 2 venv")
    parser.add_argument(
        "--wsecho", help="the wsecho binary, echo peer of 1.* to 10.* (default: websockets)"
    )
    parser.add_argument("--out", required=True, help="folder for reports and logs")
    parser.add_argument("--doc", help="write the verdict table here (markdown)")
    parser.add_argument(
        "--suites",
        default="core,perf,deflate",
        help="comma-separated, of: core (1-7, 10), perf (9), deflate (12, 13)",
    )
    parser.add_argument("--modes", default="fuzzingclient,fuzzingserver")
    parser.add_argument(
        "--full-deflate",
        action="store_true",
        help="all 216 cases of 12.* and 13.* instead of 48 (about 30 more minutes)",
    )
    parser.add_argument("--workers", type=int, default=1, help="the gateway's --workers")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="clients reach the gateway over wss:// (agent gateway-tls); direct stays ws://",
    )
    args = parser.parse_args()

    out = Path(args.out).resolve()
    reports_dir = out / "reports"
    logs = out / "logs"
    for d in (reports_dir, logs):
        if d.exists():
            subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir(parents=True)
    pidfile = out / "pids"
    pidfile.write_text("")

    suites = [s for s in args.suites.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for s in suites:
        if s not in SUITES:
            raise SystemExit(f"unknown suite {s}")
    for m in modes:
        if m not in ("fuzzingclient", "fuzzingserver"):
            raise SystemExit(f"unknown mode {m}")
    patterns = dict(SUITES)
    if args.full_deflate:
        patterns["deflate"] = FULL_DEFLATE
    expected = {s: expand_cases(args.wstest, patterns[s]) for s in suites}
    all_cases = [c for s in suites for c in expected[s]]
    log(
        "cases: "
        + ", ".join(f"{s} {len(expected[s])}" for s in suites)
        + f"; modes: {', '.join(modes)}"
    )

    gateway_agent = "gateway-tls" if args.tls else "gateway"
    (out / "expected.json").write_text(
        json.dumps(dict(modes=modes, expected=expected, full_deflate=args.full_deflate,
                        gateway_agent=gateway_agent, tls={} if args.tls else None))
    )
    tls = {}  # what the clients negotiated with the gateway, for the report
    ca, tls_flags, wstest_env = None, [], None
    if args.tls:
        ca, chain, key = make_certs(out / "tls")
        tls_flags = ["--tls-cert", str(chain), "--tls-key", str(key)]
        log(f"tls: test CA and leaf for IP 127.0.0.1 in {out / 'tls'}")
        # wstest checks the gateway's certificate against ca.pem alone.
        wstest_env = dict(os.environ, SSL_CERT_FILE=str(ca))
        wstest_env.pop("SSL_CERT_DIR", None)
    import websockets

    version = subprocess.run(
        [args.wstest, "--autobahnversion"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    meta = {
        "autobahntestsuite": version[-1] if version else "?",
        "websockets": websockets.__version__,
        "tokio-tungstenite (wsecho)": crate_version("tokio-tungstenite") if args.wsecho else "",
        "gateway workers": str(args.workers),
    }
    (out / "meta.json").write_text(json.dumps(meta))

    python3 = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = Processes(pidfile)
    runs = []

    def on_term(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    (echo_port, gw_port, gw_admin, fuzz_port, gw2_port, gw2_admin, py_port, gw3_port,
     gw3_admin) = free_ports(9)
    config = out / "gateway.toml"
    # Autobahn's URLs carry no routing key: one backend, reached whatever the key.
    config.write_text('[routing]\nmissing_key = "random"\n')

    def start_gateway(name, public, admin, backend):
        proc = procs.start(
            name,
            [
                args.gateway,
                *tls_flags,
                "--config",
                str(config),
                "--public",
                f"127.0.0.1:{public}",
                "--admin",
                f"127.0.0.1:{admin}",
                "--workers",
                str(args.workers),
                "run",
                "--backend",
                f"{backend}=127.0.0.1:{backend_port[backend]}",
            ],
            logs / f"{name}.log",
            env=dict(env, RUST_LOG=os.environ.get("RUST_LOG", "info")),
        )
        wait_port(public, proc, name)
        return proc

    backend_port = {"echo": echo_port, "echo-py": py_port, "fuzzingserver": fuzz_port}
    try:
        if "fuzzingclient" in modes:
            rust = {x for x in suites if args.wsecho and x in WSECHO_SUITES}
            targets = {}  # suite -> {agent: port}
            if rust:
                echo = procs.start(
                    "echo-backend-wsecho",
                    [args.wsecho, "server", "--listen", f"127.0.0.1:{echo_port}"],
                    logs / "echo-backend-wsecho.log",
                )
                wait_port(echo_port, echo, "echo backend (wsecho)")
                start_gateway("gateway-echo", gw_port, gw_admin, "echo")
                log(f"echo backend (wsecho) on :{echo_port}, gateway on :{gw_port} in front of it")
            if set(suites) - rust:
                echo = procs.start(
                    "echo-backend-py",
                    [python3, str(HERE / "echo_server.py"), "--port", str(py_port)],
                    logs / "echo-backend-py.log",
                    env=env,
                )
                wait_port(py_port, echo, "echo backend (websockets)")
                start_gateway("gateway-echo-py", gw3_port, gw3_admin, "echo-py")
                log(f"echo backend (websockets) on :{py_port}, gateway on :{gw3_port} in front of it")
            for suite in suites:
                if suite in rust:
                    targets[suite] = {"direct": echo_port, gateway_agent: gw_port}
                else:
                    targets[suite] = {"direct": py_port, gateway_agent: gw3_port}
            if args.tls:
                port = gw_port if rust else gw3_port
                tls["wstest -m fuzzingclient"] = wstest_tls(args.wstest, port, wstest_env)
                log(f"tls: wstest gets {tls['wstest -m fuzzingclient']}")
            limits = {"core": 300, "perf": 300, "deflate": 1800 if args.full_deflate else 300}
            for suite in suites:
                for agent, port in targets[suite].items():
                    outdir = reports_dir / "fuzzingclient" / f"{suite}-{agent}"
                    spec = out / f"fuzzingclient-{suite}-{agent}.json"
                    secure = args.tls and agent == gateway_agent
                    server = {"agent": agent, "url": f"ws://127.0.0.1:{port}"}
                    if secure:
                        # "hostname" turns on wstest's certificate and name checks.
                        server.update(url=f"wss://127.0.0.1:{port}", hostname="127.0.0.1")
                    spec.write_text(
                        json.dumps(
                            {
                                "outdir": str(outdir),
                                "servers": [server],
                                "cases": expected[suite],
                                "exclude-cases": [],
                                "exclude-agent-cases": {},
                            },
                            indent=2,
                        )
                    )
                    status, took = run_bounded(
                        procs,
                        f"fuzzingclient-{suite}-{agent}",
                        [args.wstest, "-m", "fuzzingclient", "-s", str(spec)],
                        logs / f"fuzzingclient-{suite}-{agent}.log",
                        limits[suite],
                        cwd=str(out),
                        env=wstest_env if secure else None,
                    )
                    runs.append(
                        dict(mode="fuzzingclient", suite=suite, agent=agent,
                             seconds=round(took, 1), status=status, limit=limits[suite])
                    )
                    log(f"fuzzingclient {suite:8} {agent:11} {took:6.1f} s  status {status}")
            procs.stop_all()

        if "fuzzingserver" in modes:
            spec = out / "fuzzingserver.json"
            spec.write_text(
                json.dumps(
                    {
                        "url": f"ws://127.0.0.1:{fuzz_port}",
                        "outdir": str(reports_dir / "fuzzingserver"),
                        "cases": all_cases,
                        "exclude-cases": [],
                        "exclude-agent-cases": {},
                    },
                    indent=2,
                )
            )
            fuzz = procs.start(
                "fuzzingserver",
                [args.wstest, "-m", "fuzzingserver", "-s", str(spec), "-u", "0"],
                logs / "fuzzingserver.log",
                cwd=str(out),
            )
            wait_port(fuzz_port, fuzz, "fuzzingserver")
            start_gateway("gateway-fuzzingserver", gw2_port, gw2_admin, "fuzzingserver")
            log(f"fuzzingserver on :{fuzz_port}, gateway on :{gw2_port} in front of it")
            limit = 1800 if args.full_deflate else 600
            server_url = f"ws://127.0.0.1:{fuzz_port}"
            # The fuzzing server numbers the cases in wstest's order, 1.* to 10.* first.
            numbered = expand_cases(args.wstest, all_cases)
            n_rust = sum(1 for c in numbered if args.wsecho and uses_wsecho(c))
            if args.wsecho and any(uses_wsecho(c) for c in numbered[n_rust:]):
                raise SystemExit("the fuzzing server does not number 1.* to 10.* first")
            clients = []  # (kind, argv, its case numbers, their flags)
            if n_rust:
                clients.append(("wsecho", [args.wsecho, "client", "--url", server_url],
                                f"1-{n_rust}", ["--first", "1", "--last", str(n_rust)]))
            if n_rust < len(numbered):
                clients.append(("py", [python3, str(HERE / "echo_client.py"), "--server",
                                       server_url],
                                f"{n_rust + 1}-{len(numbered)}", ["--first", str(n_rust + 1)]))
            ca_flag = {"wsecho": "--connect-ca", "py": "--via-ca"}
            for agent, via in (("direct", None), (gateway_agent, f"127.0.0.1:{gw2_port}")):
                for i, (kind, base, numbers, span) in enumerate(clients):
                    argv = base + ["--agent", agent]
                    if via:
                        argv += ["--via", via]
                        if args.tls:
                            argv += [ca_flag[kind], str(ca)]
                    last = i == len(clients) - 1
                    name = f"echo-client-{agent}-{kind}"
                    status, took = run_bounded(
                        procs, name, argv + span + ([] if last else ["--no-update"]),
                        logs / f"{name}.log", limit, env=env,
                    )
                    if status != 0 and last:
                        # Whatever the client got through, have the server write it down.
                        run_bounded(
                            procs, f"{name}-update", argv + ["--update-only"],
                            logs / f"{name}-update.log", 120, env=env,
                        )
                    what = f"{'+'.join(suites)} #{numbers} ({kind})"
                    runs.append(
                        dict(mode="fuzzingserver", suite=what, agent=agent,
                             seconds=round(took, 1), status=status, limit=limit)
                    )
                    log(f"fuzzingserver {what:24} {agent:11} {took:6.1f} s  status {status}")
                    lines = (logs / f"{name}.log").read_text().splitlines()
                    for line in lines:
                        if "abandoned" in line:
                            log(f"  {line.strip()}")
                        if f"{agent}: TLS to " in line:  # echo_client.py's first handshake
                            tls["echo_client.py"] = line.split(": ", 2)[2].strip()
                            log(f"  tls: echo_client.py gets {tls['echo_client.py']}")
    finally:
        procs.stop_all()
        pidfile.write_text("")

    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    if args.tls:
        state = json.loads((out / "expected.json").read_text())
        state["tls"] = tls
        (out / "expected.json").write_text(json.dumps(state))
    return report.main_with(
        out=out,
        modes=modes,
        expected=expected,
        runs=runs,
        doc=Path(args.doc) if args.doc else None,
        known=HERE / "known-backend-failures.txt",
        full_deflate=args.full_deflate,
        meta=meta,
        gateway_agent=gateway_agent,
        tls=tls if args.tls else None,
    )


if __name__ == "__main__":
    sys.exit(main())
