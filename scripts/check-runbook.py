#!/usr/bin/env python3
"""Checks that the operations docs only name things doc-rag has (`make runbook-check`).

    python3 scripts/check-runbook.py [--list] [FILE.md ...]

FILE defaults to docs/runbook.md and docs/troubleshooting.md. Standard library only. Checks:

  commands  every `doc-rag ...` command in a shell code block or an inline code span: its
            subcommand path exists and each --flag appears in the `--help` of the subcommand it
            follows. The binary is $DOCRAG_BIN, else $CARGO_TARGET_DIR/debug/doc-rag, else
            ~/.cache/doc-rag-target/debug/doc-rag.
  routes    every HTTP path in a curl line against doc-rag (a module port 8080-8087, a URL
            without a port, i.e. through nginx, or $API/$SEC/$STORE/...), matched against the
            routes registered in src/ (`.route("...")`, `web::resource("...")`; `{id}` matches
            one path segment).
  metrics   every metric name in PromQL (```promql blocks, and inline code that is PromQL or a
            bare metric name) against the names in src/: `counter!("...")`, `gauge!("...")`,
            `histogram!("...")`, `describe_*!("...")`, names written in src/telemetry/ (string
            literals and backticked names), and the process metrics of the metrics-process crate
            when src/ uses it; plus node_* and pg_* (exporters) and `up`. Names in PLANNED are
            accepted only in a paragraph that says "planned".
  paths     every repository path (docker/..., deploy/..., scripts/..., docs/..., config/...,
            migrations/...) exists, or is git-ignored (operator-created: docker/secrets/...).
  links     relative Markdown links point at files that exist, and #anchors at their headings.
  anchors   every runbook_url anchor of docker/prometheus/alerts.yml is a heading of
            docs/runbook.md (GitHub's anchor rules).

Every failure is printed; the exit status is 1 if there was any. `--list` also prints what was
extracted.
"""

import glob
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from promql import KEYWORDS, metric_names  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILES = ["docs/runbook.md", "docs/troubleshooting.md"]

# Metrics and commands that are designed but not built yet. The docs may name them only in a
# paragraph that says "planned" (and should say which issue brings them).
PLANNED: dict[str, str] = {}
PLANNED_COMMANDS: dict[str, str] = {}

DOCRAG_PORTS = {"8080", "8082", "8083", "8084", "8085", "8087"}
# Shell variables the docs use for doc-rag's base URLs.
DOCRAG_URL_VARS = {"API", "SEC", "STORE", "QUERY", "RESP", "EMB", "DOCRAG_URL", "DOCRAG_ADMIN_URL"}
# Hosts that are not doc-rag even without an explicit port.
EXTERNAL_HOSTS = {"qdrant", "jaeger", "prometheus", "grafana", "github.com", "grafana.docrag.com"}
EXPORTER_PREFIXES = ("node_", "pg_")
REPO_DIRS = ("docker", "deploy", "scripts", "docs", "config", "migrations")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
PROCESS_TOOLS = {"pidof", "pgrep", "pkill", "killall", "ps", "top"}
PROMQL_FUNCS = ("rate", "irate", "increase", "histogram_quantile", "topk", "bottomk", "absent",
                "delta", "deriv", "predict_linear", "label_replace", "avg_over_time",
                "max_over_time", "min_over_time", "sum_over_time")
# Inline code that is one bare name is taken as a metric when it ends like one.
METRIC_SUFFIX = re.compile(r"_(total|seconds|bytes|info|depth|up|points|fds|connections|size|confidence)$")

failures = []
listing = {"commands": [], "routes": [], "metrics": [], "paths": [], "links": [], "anchors": []}


def fail(where, msg):
    failures.append(f"{where}: {msg}")


def rel(path):
    return os.path.relpath(path, ROOT)


# --- Markdown ------------------------------------------------------------------------------


class Doc:
    """A Markdown file split into code blocks, prose lines, inline code spans and paragraphs."""

    def __init__(self, path):
        self.path = path
        self.name = rel(path)
        with open(path, encoding="utf-8") as f:
            self.lines = f.read().split("\n")
        self.blocks = []      # (lang, first line number, [lines])
        self.prose = []       # (line number, text)
        self.para = {}        # line number -> paragraph id
        self.para_text = {}   # paragraph id -> text
        fence = None
        lang = ""
        start = 0
        body = []
        pid = 0
        for i, line in enumerate(self.lines, 1):
            stripped = line.strip()
            m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
            if fence is None and m:
                fence, lang, start, body = m.group(1), m.group(2).lower(), i + 1, []
                pid += 1
                self.para[i] = pid
                continue
            if fence is not None:
                if stripped.startswith(fence) and stripped.strip("`~") == "":
                    self.blocks.append((lang, start, body))
                    fence = None
                    self.para[i] = pid
                    pid += 1
                else:
                    body.append(line)
                    self.para[i] = pid
                continue
            if not stripped:
                pid += 1
                continue
            self.para[i] = pid
            self.prose.append((i, line))
        for i, p in self.para.items():
            self.para_text[p] = self.para_text.get(p, "") + "\n" + self.lines[i - 1]

    def headings(self):
        return [(i, line) for i, line in self.prose if re.match(r"^#{1,6}\s", line)]

    def anchors(self):
        seen = {}
        out = set()
        for _, line in self.headings():
            a = github_anchor(re.sub(r"^#{1,6}\s+", "", line))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
        return out

    def spans(self):
        """(line number, text) of every inline code span outside code blocks."""
        for i, line in self.prose:
            for m in re.finditer(r"(`+)(.+?)\1", line):
                yield i, m.group(2).strip()

    def shell_lines(self):
        """(line number, text) of shell code lines, continuation lines joined."""
        for lang, start, body in self.blocks:
            if lang not in SHELL_LANGS:
                continue
            buf, first = "", None
            for k, line in enumerate(body):
                if first is None:
                    first = start + k
                if line.rstrip().endswith("\\"):
                    buf += line.rstrip()[:-1] + " "
                    continue
                yield first, buf + line
                buf, first = "", None
            if buf:
                yield first, buf

    def planned_ok(self, line_no):
        return "planned" in self.para_text.get(self.para.get(line_no), "").lower()


def github_anchor(text):
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def strip_comment(line):
    """A shell line without its trailing # comment (a # that starts a word, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k]
    return line


def shell_segment(text):
    """The text up to the first unquoted shell separator."""
    quote = None
    k = 0
    while k < len(text):
        ch = text[k]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "|;&<>)`" or (ch == "$" and text[k:k + 2] == "$("):
            return text[:k]
        k += 1
    return text


# --- commands ------------------------------------------------------------------------------


def find_binary():
    if os.environ.get("DOCRAG_BIN"):
        return os.environ["DOCRAG_BIN"]
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "doc-rag")
    return os.path.expanduser("~/.cache/doc-rag-target/debug/doc-rag")


class Cli:
    def __init__(self, binary):
        self.binary = binary
        self.cache = {}
        self.missing_reported = False

    def node(self, path):
        """(subcommands, {flag: takes_value}) of `doc-rag PATH`, or None if it does not exist."""
        path = tuple(path)
        if path not in self.cache:
            try:
                r = subprocess.run([self.binary, *path, "--help"], capture_output=True, text=True,
                                   timeout=60, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
                self.cache[path] = parse_help(r.stdout) if r.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                self.cache[path] = None
        return self.cache[path]


def parse_help(text):
    subcommands, flags = set(), {}
    section = None
    for line in text.split("\n"):
        if re.match(r"^\S.*:$", line):
            section = line[:-1].strip()
            continue
        if section == "Commands":
            m = re.match(r"^\s{2}(\S+)", line)
            if m:
                subcommands.add(m.group(1))
        elif section == "Options":
            m = re.match(r"^\s+(?:(-[A-Za-z0-9]),\s+)?(--[A-Za-z0-9][\w-]*)(\s+<[^>]+>|\s+\[<[^>]+>\])?", line)
            if m:
                if m.group(1):
                    flags[m.group(1)] = bool(m.group(3))
                flags[m.group(2)] = bool(m.group(3))
                continue
            m = re.match(r"^\s+(-[A-Za-z0-9])(\s+<[^>]+>)?(\s|$)", line)
            if m:
                flags[m.group(1)] = bool(m.group(2))
    return subcommands, flags


DOCRAG = re.compile(r"(?<![\w.\-=:])doc-rag(?=[ \t])")


def commands_in(text):
    """The argument lists of every `doc-rag ...` command in a line of shell or a code span."""
    for m in DOCRAG.finditer(text):
        # An argument of a process lookup (pidof doc-rag, pgrep -f 'doc-rag serve'), not a command.
        lead = text[:m.start()]
        cut = max(lead.rfind("|"), lead.rfind(";"), lead.rfind("&&"), lead.rfind("$("))
        if any(w.lstrip("(\"'") in PROCESS_TOOLS for w in lead[cut + 1:].split()):
            continue
        seg = shell_segment(text[m.end():])
        try:
            args = shlex.split(seg)
        except ValueError:
            args = seg.split()
        yield [a.strip("[]") for a in args if a.strip("[]")]


def check_command(doc, line_no, args, cli, root):
    where = f"{doc.name}:{line_no}"
    text = "doc-rag " + " ".join(args)
    listing["commands"].append(f"{where}: {text}")
    if not args:
        return
    if args[0] in PLANNED_COMMANDS:
        if not doc.planned_ok(line_no):
            fail(where, f"`doc-rag {args[0]}` is planned ({PLANNED_COMMANDS[args[0]]}), not built: "
                        "name it only in a paragraph that says it is planned")
        return
    if root is None:
        if not cli.missing_reported:
            cli.missing_reported = True
            fail(where, f"cannot check the doc-rag commands: no binary at {cli.binary} (make build, "
                        "or set DOCRAG_BIN)")
        return
    path = []
    subcommands, flags = root
    k = 0
    while k < len(args):
        a = args[k]
        if a in ("…", "...") or a.startswith("<") or a.startswith("$"):
            if subcommands and not a.startswith("$"):
                return  # a placeholder for the subcommand: nothing more to check
            k += 1
            continue
        if a.startswith("-") and a != "-":
            name = a.split("=", 1)[0]
            if name not in flags:
                fail(where, f"`doc-rag {' '.join(path)}` has no option {name} (in `{text}`)")
            elif flags[name] and "=" not in a:
                k += 1  # its value
            k += 1
            continue
        if subcommands:
            nxt = cli.node(path + [a])
            if a in subcommands or nxt is not None:
                path.append(a)
                subcommands, flags = nxt if nxt is not None else (set(), {})
                k += 1
                continue
            fail(where, f"`doc-rag {' '.join(path)}` has no subcommand {a!r} (in `{text}`)")
            return
        k += 1  # a positional argument


# --- routes --------------------------------------------------------------------------------


def source_routes():
    routes = set()
    for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r'(?:\.route|web::resource)\(\s*"(/[^"]*)"', text):
            routes.add(m.group(1))
    return routes


def route_regex(route):
    parts = [("[^/]+" if re.fullmatch(r"\{[^}]+\}", p) else re.escape(p)) for p in route.split("/")]
    return re.compile("^" + "/".join(parts) + "/?$")


URL = re.compile(
    r"(?:(https?)://([\w.\-]+|\[[0-9a-f:]+\])(?::(\d+))?(/[^\s'\"]*)?"
    r"|\$\{?([A-Z_]+)\}?(/[^\s'\"]*)"
    r"|(?<![\w/.])(localhost|127\.0\.0\.1):(\d+)(/[^\s'\"]*))")


def urls_in(text):
    """(path, note) of every doc-rag URL in a curl line; note says why a URL is skipped."""
    for m in URL.finditer(text):
        if m.group(1):
            host, port, path = m.group(2), m.group(3), m.group(4) or "/"
            if host in EXTERNAL_HOSTS or (port and port not in DOCRAG_PORTS):
                yield path, f"skipped: {host}:{port or 'default'} is not doc-rag"
                continue
            yield path, None
        elif m.group(5):
            if m.group(5) not in DOCRAG_URL_VARS:
                yield m.group(6), f"skipped: ${m.group(5)} is not a doc-rag base URL"
                continue
            yield m.group(6), None
        else:
            if m.group(8) not in DOCRAG_PORTS:
                yield m.group(9), f"skipped: port {m.group(8)} is not doc-rag"
                continue
            yield m.group(9), None


def clean_path(path):
    path = re.split(r"[?#]", path, 1)[0]
    return path.rstrip("\"'),.;:") or "/"


def check_routes(doc, routes):
    patterns = [(r, route_regex(r)) for r in routes]
    lines = list(doc.shell_lines()) + list(doc.spans())
    for line_no, text in lines:
        text = strip_comment(text)
        if not re.search(r"\bcurl\b", text):
            continue
        for raw, note in urls_in(text):
            path = clean_path(raw)
            where = f"{doc.name}:{line_no}"
            if note:
                listing["routes"].append(f"{where}: {path} ({note})")
                continue
            matched = [r for r, rx in patterns if rx.match(path)]
            listing["routes"].append(f"{where}: {path} -> {', '.join(sorted(matched)) or 'NO ROUTE'}")
            if not matched:
                fail(where, f"curl path {path} matches no route registered in src/")


# --- metrics -------------------------------------------------------------------------------


def source_metrics():
    """(names, histograms): metric names recorded, described or documented in src/."""
    names, histograms = set(), set()
    uses_process = False
    for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r'\b(?:describe_)?(counter|gauge|histogram)!\(\s*"([A-Za-z_:][\w:]*)"', text):
            names.add(m.group(2))
            if m.group(1) == "histogram":
                histograms.add(m.group(2))
        if "metrics_process" in text:
            uses_process = True
        if os.sep + "telemetry" + os.sep in path:
            # Written down in the telemetry module: its string literals and backticked names.
            for m in re.finditer(r'"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"', text):
                names.add(m.group(1))
                histograms.add(m.group(1))  # type unknown: allow _bucket/_sum/_count
            for m in re.finditer(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?:\{[^`]*\})?`", text):
                names.add(m.group(1))
                histograms.add(m.group(1))
    if uses_process:
        process = process_metrics()
        if process is None:
            fail("src/", "uses metrics_process, but its source (for the metric names) is not in "
                         "the cargo registry: process_* names cannot be checked")
        else:
            names |= process
    return names, histograms


def process_metrics():
    """The names the metrics-process crate exports (its version from Cargo.lock)."""
    try:
        with open(os.path.join(ROOT, "Cargo.lock"), encoding="utf-8") as f:
            lock = f.read()
    except OSError:
        return None
    m = re.search(r'name = "metrics-process"\nversion = "([^"]+)"', lock)
    if not m:
        return None
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    dirs = glob.glob(os.path.join(home, "registry", "src", "*", f"metrics-process-{m.group(1)}"))
    if not dirs:
        return None
    names = set()
    for path in glob.glob(os.path.join(dirs[0], "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            for n in re.findall(r'"(?:\{prefix\})?(process_[a-z_]+)"', f.read()):
                names.add(n)
    return names or None


def promql_of_span(span):
    """The PromQL in an inline code span, or None when the span is something else."""
    if re.fullmatch(r"[a-zA-Z_:][\w:]*(\{[^}=]*\})?", span):
        name = span.split("{", 1)[0]
        return name if (METRIC_SUFFIX.search(name) or name == "up") else None
    if re.search(r"[a-zA-Z_:][\w:]*\{[^}]*(=|!=|=~|!~)", span):
        return span
    if re.search(r"\b(" + "|".join(PROMQL_FUNCS) + r")\s*\(", span):
        return span
    if re.search(r"\b(sum|max|min|avg|count)\s+by\s*\(", span):
        return span
    return None


def check_metrics(doc, names, histograms):
    exprs = []
    for lang, start, body in doc.blocks:
        if lang == "promql":
            for k, line in enumerate(body):
                line = re.sub(r"(^|\s)#.*$", "", line)
                if line.strip():
                    exprs.append((start + k, line))
    for line_no, span in doc.spans():
        q = promql_of_span(span)
        if q:
            exprs.append((line_no, q))
    for line_no, expr in exprs:
        where = f"{doc.name}:{line_no}"
        for name in sorted(metric_names(expr)):
            base = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in histograms:
                    base = name[: -len(suffix)]
            if base in names or name in names:
                status = "src"
            elif name == "up" or name.startswith(EXPORTER_PREFIXES):
                status = "exporter"
            elif name in PLANNED or base in PLANNED:
                issue = PLANNED.get(name) or PLANNED.get(base)
                status = f"planned ({issue})"
                if not doc.planned_ok(line_no):
                    fail(where, f"metric {name} is planned ({issue}), not built: name it only in a "
                                "paragraph that says it is planned")
            else:
                status = "NOT FOUND"
                fail(where, f"metric {name} is not recorded, described or documented in src/")
            listing["metrics"].append(f"{where}: {name} [{status}]")


# --- paths and links -----------------------------------------------------------------------

PATH = re.compile(r"(?<![\w./$~-])((?:" + "|".join(REPO_DIRS) + r")/[\w.\-/*{},]*)")


def expand_braces(p):
    m = re.search(r"\{([^{}]*,[^{}]*)\}", p)
    if not m:
        return [p]
    return [x for alt in m.group(1).split(",") for x in expand_braces(p[: m.start()] + alt + p[m.end():])]


def git_ignored(path):
    try:
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
        return r.returncode == 0
    except OSError:
        return False


def check_paths(doc):
    seen = set()
    for i, line in enumerate(doc.lines, 1):
        for m in PATH.finditer(line):
            raw = m.group(1).rstrip(".,:;")
            raw = raw.rstrip(",")
            if (i, raw) in seen:
                continue
            seen.add((i, raw))
            where = f"{doc.name}:{i}"
            for p in expand_braces(raw):
                if "{" in p or "}" in p:
                    p = re.split(r"[{}]", p, 1)[0]
                if any(ch in p for ch in "*?"):
                    found = glob.glob(os.path.join(ROOT, p))
                    ok = bool(found) or git_ignored(p.split("*", 1)[0].rsplit("/", 1)[0] + "/")
                else:
                    ok = os.path.exists(os.path.join(ROOT, p)) or git_ignored(p)
                    if not ok and "kubectl" in line and re.fullmatch(r"deploy/[\w.-]+", p):
                        # kubectl's short form of deployment/<name>, not a repository path
                        listing["paths"].append(f"{where}: {p} [skipped: a kubectl resource name]")
                        continue
                listing["paths"].append(f"{where}: {p} [{'ok' if ok else 'MISSING'}]")
                if not ok:
                    fail(where, f"{p} does not exist in the repository (and is not git-ignored)")


def check_links(doc, anchors_of):
    for i, line in doc.prose:
        for m in re.finditer(r"\]\(([^)\s]+)\)", line):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            where = f"{doc.name}:{i}"
            file_part, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(doc.path), file_part)) if file_part else doc.path
            if not os.path.exists(path):
                fail(where, f"link {target}: {rel(path)} does not exist")
                listing["links"].append(f"{where}: {target} [MISSING FILE]")
                continue
            if anchor and path.endswith(".md"):
                ok = anchor in anchors_of(path)
                listing["links"].append(f"{where}: {target} [{'ok' if ok else 'NO SUCH HEADING'}]")
                if not ok:
                    fail(where, f"link {target}: {rel(path)} has no heading with anchor #{anchor}")
            else:
                listing["links"].append(f"{where}: {target} [ok]")


# --- alert anchors -------------------------------------------------------------------------


def check_alert_anchors(runbook_anchors):
    path = os.path.join(ROOT, "docker", "prometheus", "alerts.yml")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    alert = None
    n = 0
    for i, line in enumerate(lines, 1):
        m = re.match(r"^\s*-\s*alert:\s*(\S+)", line)
        if m:
            alert = m.group(1)
        m = re.match(r"""^\s*runbook_url:\s*["']?([^"'\s]+)""", line)
        if not m:
            continue
        n += 1
        url = m.group(1)
        where = f"docker/prometheus/alerts.yml:{i}"
        base, _, anchor = url.partition("#")
        if not base.endswith("/docs/runbook.md"):
            fail(where, f"{alert}: runbook_url {url} does not point at docs/runbook.md")
        ok = anchor in runbook_anchors
        listing["anchors"].append(f"{where}: {alert} #{anchor} [{'ok' if ok else 'NO SUCH HEADING'}]")
        if not ok:
            fail(where, f"{alert}: #{anchor} is not a heading of docs/runbook.md")
    if n == 0:
        fail("docker/prometheus/alerts.yml", "no runbook_url found")


# --- main ----------------------------------------------------------------------------------


def main(argv):
    show = "--list" in argv
    files = [a for a in argv if a != "--list"]
    if any(a.startswith("-") for a in files):
        print(__doc__)
        return 2
    files = files or DEFAULT_FILES
    docs = [Doc(os.path.join(ROOT, f) if not os.path.isabs(f) else f) for f in files]

    cli = Cli(find_binary())
    root = cli.node([]) if os.path.exists(cli.binary) else None
    routes = source_routes()
    names, histograms = source_metrics()
    anchor_cache = {}

    def anchors_of(path):
        if path not in anchor_cache:
            anchor_cache[path] = Doc(path).anchors()
        return anchor_cache[path]

    for doc in docs:
        seen = set()
        for line_no, text in list(doc.shell_lines()) + list(doc.spans()):
            for args in commands_in(strip_comment(text)):
                key = (line_no, tuple(args))
                if key not in seen:
                    seen.add(key)
                    check_command(doc, line_no, args, cli, root)
        check_routes(doc, routes)
        check_metrics(doc, names, histograms)
        check_paths(doc)
        check_links(doc, anchors_of)
    check_alert_anchors(anchors_of(os.path.join(ROOT, "docs", "runbook.md")))

    if show:
        print(f"binary: {cli.binary}{'' if root else ' (not found)'}")
        print(f"routes in src/: {len(routes)}; metric names from src/: {len(names)}")
        for kind, items in listing.items():
            print(f"\n== {kind} ({len(items)})")
            for item in items:
                print(f"  {item}")
        print()
    counts = ", ".join(f"{len(v)} {k}" for k, v in listing.items())
    if failures:
        for f in failures:
            print(f"FAIL {f}")
        print(f"check-runbook: {len(failures)} failures ({counts} checked in {', '.join(files)})")
        return 1
    print(f"check-runbook: ok ({counts} checked in {', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
