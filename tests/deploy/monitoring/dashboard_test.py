#!/usr/bin/env python3
"""The Grafana dashboard (deploy/grafana/trams-serve.json) and the alert rules (deploy/prometheus/alerts.yml)
against a live server: every metric name their PromQL uses must be one a real trams-server exports, every
expression must parse and evaluate in a real Prometheus, and the core panels must show data.

Three trams-servers run on loopback: a host one (job trams, with a state dir so snapshots are written), the
CUDA path emulated on the host (job trams_emulated: the gpu and arena series), and one with API keys whose
tenant runs into its max_sessions and tokens_per_second quotas (job trams_tenants: the quota series, which
exist only once a tenant has been refused or throttled). trams-client drives create, score and generate;
Prometheus scrapes all three every second.

Usage: dashboard_test.py [DASHBOARD.json [ALERTS.yml]] (default: the repo's).
Environment: TRAMS_SERVER, TRAMS_CLIENT (binaries), TRAMS_SOURCE_DIR (repo root); optional PROMETHEUS.
Exits 77 (ctest SKIP_RETURN_CODE) when prometheus is missing. Python standard library only.
"""

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SKIP = 77
SOURCE_DIR = os.environ.get("TRAMS_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DASHBOARD = os.path.join(SOURCE_DIR, "deploy", "grafana", "trams-serve.json")
ALERTS = os.path.join(SOURCE_DIR, "deploy", "prometheus", "alerts.yml")
MODEL = os.path.join(SOURCE_DIR, "tests", "golden", "models", "adaptive_samelen")
SERVER_FLAGS = ["--listen", "127.0.0.1:0", "--metrics_listen", "127.0.0.1:0", "--mem_len", "24", "--topk", "4",
                "--remain", "8", "--segment_len", "8"]
JOBS = ("trams", "trams_emulated", "trams_tenants")
# Panels that must show finite data after the load below, every one of their queries.
CORE_PANELS = (
    "Tokens per second", "Requests per second by method", "Request latency by method (OK calls)",
    "Generate: time to first token", "Sessions", "Session events per second", "Memory budget: used vs capacity",
    "Pool and weight bytes by device", "GPU memory", "GPU pool arena", "TRAMS attention on memory: selected vs recent",
    "Quota refusals by tenant", "Throttled by tenant",
)
# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                     "scrape_series_added"}


class Failure(Exception):
    pass


# --- PromQL: template variables, metric names ------------------------------------------------------------

def substitute(expr, jobs):
    """Grafana's variables as a query of this test sees them: $job and $instance as regexes."""
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "job": "|".join(jobs),
              "instance": ".*", "datasource": "prometheus"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan", "atan2"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(r'\s+|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`|\{[^}]*\}|\[[^\]]*\]'
                   r'|(?P<num>0x[0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+\b|\d+\.?\d*(?:[eE][+-]?\d+)?)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|.')


def metric_names(expr):
    """Names of the series a PromQL expression selects: identifiers that are not functions, keywords,
    grouping labels, label matchers, ranges, strings or numbers."""
    tokens = [(m.group("id"), m.group(0)) for m in TOKEN.finditer(expr) if not m.group(0).isspace()]
    names, i = set(), 0
    while i < len(tokens):
        ident, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if ident and ident.lower() in GROUPING and nxt == "(":
            i += 2
            while i < len(tokens) and tokens[i][1] != ")":
                i += 1
        elif ident and ident.lower() not in KEYWORDS and nxt != "(" and nxt.lower() not in GROUPING:
            names.add(ident)  # not a function, nor an aggregation written `sum by (...) (...)`
        i += 1
    return names


def dashboard_queries(dashboard):
    """(panel title, refId, expr) of every panel target, rows' nested panels included; also the variables'."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t.get("refId", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def variable_queries(dashboard):
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q or "")
            if not m:
                raise Failure("variable %s: not a label_values(SELECTOR, LABEL) query: %r" % (v.get("name"), q))
            out.append(("variable " + v["name"], "-", m.group(1)))
    return out


def alert_exprs(path):
    """(alert name, expr) of every rule in a Prometheus rules file: `expr: ...` on one line or a `|` block.
    (No YAML library in the standard library; alerts_test.sh checks the file with promtool.)"""
    lines = open(path, encoding="utf-8").read().splitlines()
    out, name, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*(alert|record):\s*(\S+)", line)
        if m:
            name = m.group(2)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", ">", "|-", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                out.append((name, " ".join(block)))
                continue
            if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "'\"":
                rest = rest[1:-1]
            out.append((name, rest))
        i += 1
    return out


def exported_names(metrics_text):
    """Series names a /metrics page exports (a histogram's _bucket, _sum and _count too)."""
    names = set()
    for line in metrics_text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) in ("histogram", "summary"):
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[^{\s]+", line).group(0))
    return names


# --- processes -------------------------------------------------------------------------------------------

class Harness:
    def __init__(self, work, server_bin, client_bin, prometheus_bin):
        self.work, self.server_bin, self.client_bin, self.prometheus_bin = work, server_bin, client_bin, prometheus_bin
        self.procs = []
        self.servers = {}  # job -> (grpc port, metrics port)
        self.prom = None

    def spawn(self, name, argv):
        log = open(os.path.join(self.work, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append((name, p))
        return p

    def start_server(self, job, *flags):
        ports = os.path.join(self.work, job + ".ports")
        p = self.spawn(job, [self.server_bin, "--model", MODEL, *SERVER_FLAGS, "--port_file", ports, *flags])
        return p, ports

    def wait_ports(self, job, p, ports):
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(ports) and os.path.getsize(ports) > 0:
                grpc, metrics = open(ports).read().split()[:2]
                self.servers[job] = (int(grpc), int(metrics))
                print("trams-server (%s): gRPC 127.0.0.1:%s, metrics 127.0.0.1:%s" % (job, grpc, metrics))
                return
            if p.poll() is not None:
                raise Failure("trams-server (%s) exited with %s before serving" % (job, p.returncode))
            time.sleep(0.05)
        raise Failure("trams-server (%s) wrote no port file in 30 s" % job)

    def start_prometheus(self):
        config = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s",
                  "scrape_configs:"]
        for job, (_, metrics) in self.servers.items():
            config += ["  - job_name: " + job, "    static_configs:", "      - targets: ['127.0.0.1:%d']" % metrics]
        path = os.path.join(self.work, "prometheus.yml")
        open(path, "w").write("\n".join(config) + "\n")
        for attempt in range(5):
            port = random.randint(20000, 50000)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    continue
            tsdb = os.path.join(self.work, "tsdb%d" % attempt)
            p = self.spawn("prometheus", [self.prometheus_bin, "--config.file=" + path, "--storage.tsdb.path=" + tsdb,
                                          "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"])
            deadline = time.time() + 30
            while time.time() < deadline and p.poll() is None:
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % port, timeout=1).read()
                    self.prom = "http://127.0.0.1:%d" % port
                    print("prometheus:", self.prom)
                    return
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            p.terminate()
            p.wait()
        raise Failure("prometheus did not become ready")

    def client(self, job, *args, key=None, expect_ok=True):
        argv = [self.client_bin, "--server", "127.0.0.1:%d" % self.servers[job][0]]
        if key:
            argv += ["--api_key_file", key]
        r = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=60)
        if expect_ok and r.returncode != 0:
            raise Failure("trams-client %s on %s: %s" % (" ".join(args), job, r.stderr.strip()[-500:]))
        return r

    def query(self, expr):
        url = self.prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = urllib.request.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body)

    def metrics_text(self, job):
        return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.servers[job][1], timeout=5).read().decode()

    def stop(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def dump_logs(self):
        for name, _ in self.procs:
            path = os.path.join(self.work, name + ".log")
            if os.path.exists(path):
                tail = open(path, errors="replace").read().splitlines()[-20:]
                print("---- last lines of %s.log ----" % name, file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)


def parallel(*calls):
    """Runs the callables at once; re-raises the first failure."""
    errors = []

    def run(c):
        try:
            c()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def wait_for(what, seconds, check):
    deadline = time.time() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.time() > deadline:
            raise Failure("timed out after %d s waiting for %s" % (seconds, what))
        time.sleep(0.5)


def finite_values(result):
    vals = []
    for series in result.get("data", {}).get("result", []):
        v = series.get("value", [0, "NaN"])[1]
        try:
            f = float(v)
        except ValueError:
            continue
        if math.isfinite(f):
            vals.append(f)
    return vals


# --- the test --------------------------------------------------------------------------------------------

def drive_load(h, work):
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        for i in range(60):
            f.write("Line %d: the quick brown fox jumps over the lazy dog while the memory pool keeps what matters.\n" % i)
    key = os.path.join(work, "alice.key")
    open(key, "w").write("alice-test-key\n")

    def host_round(first):
        if first:
            for s in ("alpha", "beta", "gamma"):
                h.client("trams", "create", "--session", s)
        h.client("trams", "score", "--session", "alpha", "--file", text)
        h.client("trams", "generate", "--session", "gamma", "--prompt", "Once upon a time", "--max_tokens", "16",
                 "--seed", "7")
        h.client("trams", "score", "--session", "beta", "--file", text)
        h.client("trams", "get", "--session", "no-such-session", expect_ok=False)  # a NOT_FOUND for the error panel

    def emulated_round(first):
        if first:
            h.client("trams_emulated", "create", "--session", "delta")
        h.client("trams_emulated", "generate", "--session", "delta", "--prompt", "Hello", "--max_tokens", "8",
                 "--seed", "3")

    def tenant_round(first):
        if first:
            h.client("trams_tenants", "create", "--session", "one", key=key)
        # max_sessions=1 with --evict refuse: a second session is a quota refusal.
        r = h.client("trams_tenants", "create", "--session", "two%d" % int(first), key=key, expect_ok=False)
        if r.returncode == 0 or "RESOURCE_EXHAUSTED" not in r.stderr:
            raise Failure("tenant's second session was not refused by its quota: %s" % (r.stderr or r.stdout))
        # tokens_per_second=2000: the text's ~5.7K tokens wait about 2 s for their tenant's rate.
        h.client("trams_tenants", "score", "--session", "one", "--file", text, key=key)

    parallel(lambda: host_round(True), lambda: emulated_round(True), lambda: tenant_round(True))
    # A histogram's series appears with its first observation; rate() needs a scrape before the next ones.
    wait_for("a scrape of every job's Score or Generate latencies", 20, lambda: len(h.query(
        'count by (job) (trams_request_duration_seconds_count{method=~"Score|Generate"})')["data"]["result"]) == 3)
    parallel(lambda: host_round(False), lambda: emulated_round(False), lambda: tenant_round(False))


def check_names(h, queries, exported):
    """Every metric name of every query is exported by one of the servers (or written by Prometheus)."""
    missing = {}
    for where, expr in queries:
        for name in metric_names(expr):
            if name not in exported and name not in PROMETHEUS_SERIES:
                missing.setdefault(name, []).append(where)
    for name, where in sorted(missing.items()):
        print("FAIL: %s is not exported by this trams-server (used by %s)" % (name, ", ".join(sorted(set(where)))),
              file=sys.stderr)
    if missing:
        expected_new = {"trams_health_serving", "trams_queue_capacity"} & set(missing)
        if expected_new:
            print("note: %s: gauges the server gains with the health/queue-capacity change; rebuild trams-server "
                  "(%s) and rerun" % (", ".join(sorted(expected_new)), h.server_bin), file=sys.stderr)
        raise Failure("%d metric names not exported" % len(missing))
    print("ok: %d queries use only exported metric names" % len(queries))


def main():
    server_bin, client_bin = os.environ.get("TRAMS_SERVER", ""), os.environ.get("TRAMS_CLIENT", "")
    prometheus_bin = os.environ.get("PROMETHEUS") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else shutil.which("prometheus"))
    if not prometheus_bin or not os.access(prometheus_bin, os.X_OK):
        print("SKIP: prometheus not found (Debian package 'prometheus'; deploy/deps.sh --tests installs it)",
              file=sys.stderr)
        return SKIP
    for what, path in (("TRAMS_SERVER", server_bin), ("TRAMS_CLIENT", client_bin)):
        if not path or not os.access(path, os.X_OK):
            print("FAIL: %s=%r is not an executable" % (what, path), file=sys.stderr)
            return 1
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        print("FAIL: no model at " + MODEL, file=sys.stderr)
        return 1

    dashboard_path = sys.argv[1] if len(sys.argv) > 1 else DASHBOARD
    alerts_path = sys.argv[2] if len(sys.argv) > 2 else ALERTS
    dashboard = json.load(open(dashboard_path, encoding="utf-8"))
    panel_queries = dashboard_queries(dashboard)
    var_queries = variable_queries(dashboard)
    alerts = alert_exprs(alerts_path)
    if not panel_queries or not alerts:
        print("FAIL: no panel queries in %s or no alert expressions in %s" % (dashboard_path, alerts_path),
              file=sys.stderr)
        return 1
    titles = {t for t, _, _ in panel_queries}
    absent_core = [t for t in CORE_PANELS if t not in titles]
    if absent_core:
        print("FAIL: core panels missing from the dashboard: %s" % absent_core, file=sys.stderr)
        return 1

    start = time.time()
    work = tempfile.mkdtemp(prefix="trams-dashboard.")
    h = Harness(work, server_bin, client_bin, prometheus_bin)
    try:
        keys = os.path.join(work, "keys.txt")
        import hashlib
        digest = hashlib.sha256(b"alice-test-key").hexdigest()
        open(keys, "w").write("alice sha256:%s max_sessions=1 tokens_per_second=2000\n" % digest)
        started = [
            ("trams",) + h.start_server("trams", "--device", "cpu", "--memory_share_every", "2",
                                        "--state_dir", os.path.join(work, "state"), "--snapshot_interval_seconds", "1"),
            ("trams_emulated",) + h.start_server("trams_emulated", "--device", "emulated", "--gpu_pool_bytes", "8388608",
                                                 "--memory_share_every", "2"),
            ("trams_tenants",) + h.start_server("trams_tenants", "--device", "cpu", "--auth_keys", keys,
                                                "--evict", "refuse"),
        ]
        for job, p, ports in started:
            h.wait_ports(job, p, ports)
        h.start_prometheus()
        # Counters must be scraped at their start values first, so rates see the load grow them.
        wait_for("every target up", 20, lambda: len([v for v in finite_values(h.query("up")) if v == 1]) == len(JOBS))

        drive_load(h, work)
        exported = set()
        for job in JOBS:
            exported |= exported_names(h.metrics_text(job))

        queries = [("panel '%s' %s" % (t, r), e) for t, r, e in panel_queries + var_queries] + \
                  [("alert " + a, e) for a, e in alerts]
        check_names(h, queries, exported)

        # Every expression parses and evaluates.
        bad = []
        for where, expr in queries:
            r = h.query(substitute(expr, JOBS))
            if r.get("status") != "success":
                bad.append("%s: %s: %s" % (where, r.get("error", r), substitute(expr, JOBS)))
        if bad:
            raise Failure("queries Prometheus refused:\n  " + "\n  ".join(bad))
        print("ok: %d panel, %d variable and %d alert expressions evaluate" % (
            len(panel_queries), len(var_queries), len(alerts)))

        # The core panels show data: every one of their queries has a finite value.
        core = [(t, r, e) for t, r, e in panel_queries if t in CORE_PANELS]
        pending = list(core)

        def core_ready():
            pending[:] = [(t, r, e) for t, r, e in pending if not finite_values(h.query(substitute(e, JOBS)))]
            return not pending

        try:
            wait_for("data in every core panel", 20, core_ready)
        except Failure:
            raise Failure("core panel queries with no data:\n  " + "\n  ".join(
                "'%s' %s: %s" % (t, r, substitute(e, JOBS)) for t, r, e in pending))
        print("ok: %d queries of %d core panels return data" % (len(core), len(CORE_PANELS)))
        with_data = sum(1 for _, _, e in panel_queries if h.query(substitute(e, JOBS))["data"]["result"])
        print("info: %d of %d panel queries return series" % (with_data, len(panel_queries)))
        print("PASS (%.0f s)" % (time.time() - start))
        return 0
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        h.dump_logs()
        return 1
    finally:
        h.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
