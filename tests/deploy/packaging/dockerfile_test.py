#!/usr/bin/python3
"""Checks Dockerfile and Dockerfile.cuda without a Docker engine (CI has none).

Parses each Dockerfile into stages and checks, against this repository, Debian 12's apt and the programs
of a build tree:
  - context: every COPY/ADD source from the build context exists and is not excluded by .dockerignore;
    the sources CMake needs are not excluded; the context (the tree less .dockerignore) stays small;
  - packages: every `apt-get install`ed package exists in Debian 12 (apt-cache); NVIDIA repository
    packages are skipped, with a message, where that repository is not configured; the build stage
    installs deploy/deps.sh's build packages; the runtime stage installs no compiler and no -dev package;
  - libraries: every library `ldd` resolves for the programs the image carries belongs (dpkg -S) to a
    package the runtime stage installs, one of their dependencies, or a Priority: required package of the
    base image; CUDA libraries of the module map to NVIDIA's package names;
  - runtime: the ENTRYPOINT program, the flag file and the model are copied in at the layout the
    Kubernetes manifests use; USER is numeric and not root; HEALTHCHECK runs the client's `health`; the
    ports are exposed; the CMD reads the flag file and listens on every interface; the CUDA image's
    module sits where the loader looks.

Usage: dockerfile_test.py REPO_ROOT [BUILD_DIR]   (without BUILD_DIR the `ldd` checks are skipped)
Exit status 0 when every check passes, 1 otherwise. Output: one line per failure, then a summary.
"""

import functools
import json
import os
import re
import shlex
import subprocess
import sys

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
# The layout the Kubernetes manifests and the flag file assume.
BIN_DIR = "/usr/local/bin"
PROGRAMS = ["trams-server", "trams-client", "trams-eval"]
MODEL_DIR = "/usr/share/trams-serve/models/trams-byte-books"
FLAG_FILE = "/etc/trams-serve/trams-server.flags"
UID = "10001"
PORTS = {"50051", "9464"}
CUDA_MODULE = "libtrams_cuda.so"
# Build outputs the images may copy, by the CMake target that makes them.
ARTIFACT_TARGETS = {"trams-server": "trams-server", "trams-client": "trams-client",
                    "trams-eval": "trams-eval", CUDA_MODULE: "trams_cuda"}
# A context larger than this means .dockerignore let a build tree (hundreds of MiB each) or .git through.
MAX_CONTEXT_BYTES = 64 << 20
# NVIDIA's debian12 CUDA repository: its package names, and the ones holding the module's libraries
# (this machine's CUDA is not from dpkg, so dpkg -S cannot say).
NVIDIA_PACKAGE = re.compile(r"^(cuda-|libcublas|libcudnn|libnccl|libnvjitlink|nvidia-)")
CUDA_SONAME_PACKAGES = {"libcudart.so.13": "cuda-cudart-13-0", "libcublas.so.13": "libcublas-13-0",
                        "libcublasLt.so.13": "libcublas-13-0"}
COMPILERS = re.compile(r"^(gcc|g\+\+|cpp|clang|llvm|build-essential|make|cmake|ninja-build|nvcc|"
                       r"cuda-nvcc|cuda-compiler|cuda-toolkit|protobuf-compiler)(-[0-9.-]+)?$|-dev$|-dev-[0-9-]+$")

failures = []
notes = []


def fail(dockerfile, message):
    failures.append(f"{dockerfile}: {message}")
    print(f"FAIL {dockerfile}: {message}")


def note(message):
    notes.append(message)
    print(f"NOTE {message}")


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


# --- parsing ----------------------------------------------------------------------------------------------

class Stage:
    def __init__(self, base, name, index):
        self.base, self.name, self.index = base, name, index
        self.instructions = []  # (keyword, arguments text) with variables substituted
        self.args = {}          # ARG/ENV values in scope
        self.workdir = "/"


def substitute(text, values):
    def repl(m):
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def logical_lines(text):
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    out, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        out.append(current)
        current = ""
    if current:
        out.append(current)
    return out


def parse_kv(text):
    """ARG/ENV arguments: NAME=value pairs (shell-quoted) or ENV's legacy `NAME value`."""
    parts = shlex.split(text)
    if len(parts) >= 2 and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) if "=" in p else (p, None) for p in parts)


def parse_dockerfile(path):
    global_args, stages = {}, []
    for line in logical_lines(open(path).read()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = substitute(rest, global_args).split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, len(stages)))
            continue
        if not stages:
            if keyword == "ARG":
                global_args.update({k: v for k, v in parse_kv(rest).items() if v is not None})
            continue
        stage = stages[-1]
        if keyword == "ARG":
            for k, v in parse_kv(rest).items():
                stage.args[k] = v if v is not None else global_args.get(k, "")
            continue
        rest = substitute(rest, stage.args)
        if keyword == "ENV":
            stage.args.update(parse_kv(rest))
        if keyword == "WORKDIR":
            stage.workdir = os.path.join(stage.workdir, rest)
        stage.instructions.append((keyword, rest))
    return stages


def exec_form(text):
    """A JSON-array (exec form) argument list, or None for the shell form."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def copy_parts(text):
    """(flags, sources, destination) of a COPY/ADD."""
    words = exec_form(text) or shlex.split(text)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, words[:-1], words[-1]


def copy_destinations(stage):
    """Every path a stage's COPY/ADD instructions create: {destination: (flags, source)}."""
    out = {}
    for keyword, text in stage.instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        flags, sources, dest = copy_parts(text)
        dest = os.path.join(stage.workdir, dest)
        for src in sources:
            target = os.path.join(dest, os.path.basename(src.rstrip("/"))) if (
                len(sources) > 1 or dest.endswith("/")) else dest
            out[os.path.normpath(target)] = (flags, src)
    return out


def shell_commands(text):
    """A RUN's shell text as its simple commands (word lists), split at ; && || | &."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return commands + [current]


def apt_installs(stage):
    """Package names `apt-get install`ed by a stage's RUN instructions, and whether each command used
    --no-install-recommends."""
    packages, all_no_recommends = [], True
    for keyword, text in stage.instructions:
        if keyword != "RUN":
            continue
        for words in shell_commands(text):
            while words and "=" in words[0] and not words[0].startswith("-"):
                words.pop(0)  # DEBIAN_FRONTEND=noninteractive
            if len(words) < 2 or words[0] not in ("apt-get", "apt") or "install" not in words:
                continue
            args = words[words.index("install") + 1:]
            all_no_recommends &= "--no-install-recommends" in args
            for a in args:
                if not a.startswith("-") and "/" not in a:  # ./file.deb is not a repository package
                    packages.append(a.split("=")[0])
    return packages, all_no_recommends


# --- .dockerignore ----------------------------------------------------------------------------------------

def load_dockerignore(root):
    path = os.path.join(root, ".dockerignore")
    patterns = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
            patterns.append((negate, pattern))
    return patterns


@functools.lru_cache(maxsize=None)
def pattern_regex(pattern):
    """Docker's pattern syntax (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out + "$")


def excluded(relpath, patterns):
    """Whether .dockerignore keeps relpath out of the context (a match on a parent folder counts)."""
    relpath = os.path.normpath(relpath)
    parents = [relpath]
    while os.path.dirname(parents[-1]):
        parents.append(os.path.dirname(parents[-1]))
    result = False
    for negate, pattern in patterns:
        rx = pattern_regex(pattern)
        if any(rx.match(p) for p in parents):
            result = not negate
    return result


def context_bytes(root, patterns):
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not excluded(os.path.join(rel, d), patterns)]
        for f in filenames:
            p = os.path.join(rel, f)
            if not excluded(p, patterns):
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


# --- Debian packages --------------------------------------------------------------------------------------

def apt_lists_present():
    lists = "/var/lib/apt/lists"
    return os.path.isdir(lists) and any(n.endswith("_Packages") or "_Packages." in n for n in os.listdir(lists))


def nvidia_repo_configured():
    out = run(["apt-cache", "policy"]).stdout
    return "developer.download.nvidia.com" in out


_known_packages = set()


def load_known_packages(names):
    """Which of `names` apt knows (one apt-cache call: each call reads every list, about 2 s here)."""
    r = run(["apt-cache", "show", "--no-all-versions", *sorted(set(names))])
    _known_packages.update(re.findall(r"^Package: (\S+)$", r.stdout, re.M))


def package_exists(name):
    return name in _known_packages


_installed_cache = {}


def installed_field(package, field):
    key = (package, field)
    if key not in _installed_cache:
        r = run(["dpkg-query", "-W", "-f", "${" + field + "}", package])
        _installed_cache[key] = r.stdout if r.returncode == 0 else None
    return _installed_cache[key]


def dependency_closure(packages):
    """The packages and their Depends/Pre-Depends, recursively, as dpkg knows them on this machine (no apt
    lists needed; the runtime libraries are installed here as dependencies of the -dev packages)."""
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        deps = (installed_field(p, "Depends") or "") + "," + (installed_field(p, "Pre-Depends") or "")
        for clause in deps.split(","):
            for alternative in clause.split("|"):
                name = alternative.strip().split(" ")[0].split(":")[0]
                if name:
                    todo.append(name)
    return seen


def path_spellings(path):
    """A library path as dpkg may have recorded it (merged /usr: /lib and /usr/lib are one folder)."""
    out = []
    for c in (path, os.path.realpath(path)):
        out.append(c)
        if c.startswith("/usr/lib/"):
            out.append(c[len("/usr"):])
        elif c.startswith("/lib/"):
            out.append("/usr" + c)
    return out


_owners = {}


def load_library_packages(paths):
    """dpkg -S for many paths in one call (each call reads every package's file list)."""
    spellings = sorted({c for p in paths for c in path_spellings(p)})
    r = run(["dpkg", "-S", *spellings])
    for line in r.stdout.splitlines():
        package, _, path = line.partition(": ")
        if "," not in package:  # "pkg1, pkg2: /dir" lines are shared folders, not files
            _owners[path.strip()] = package.split(":")[0]


def library_package(path):
    """The dpkg package owning a library path, or None."""
    return next((_owners[c] for c in path_spellings(path) if c in _owners), None)


def ldd_libraries(binary):
    r = run(["ldd", binary])
    libs = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m:
            libs[m.group(1)] = m.group(2)
        elif "not found" in line:
            libs[line.split()[0]] = None
    return libs


# --- the checks -------------------------------------------------------------------------------------------

def check_context(df, stages, root, patterns):
    names = {s.name for s in stages if s.name}
    for stage in stages:
        for keyword, text in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            flags, sources, _ = copy_parts(text)
            if "from" in flags:
                if flags["from"] not in names and not flags["from"].isdigit():
                    fail(df, f"{keyword} --from={flags['from']}: no stage of that name")
                continue
            for src in sources:
                if re.match(r"^https?://", src):
                    continue  # a download, not the context
                if not os.path.exists(os.path.join(root, src)):
                    fail(df, f"{keyword} {src}: no such file or folder in the repository")
                elif src not in (".", "./") and excluded(src, patterns):
                    fail(df, f"{keyword} {src}: excluded from the build context by .dockerignore")


def check_build_stage(df, build, deps_build_packages):
    """The build stage installs deploy/deps.sh's build packages (one list to keep, the other checked)."""
    packages, _ = apt_installs(build)
    for p in deps_build_packages:
        if p != "ccache" and p not in packages:  # ccache only speeds up rebuilds
            fail(df, f"build stage '{build.name}' does not install {p} (deploy/deps.sh build_pkgs has it)")


def check_packages_exist(df, stage, packages, have_lists, have_nvidia):
    for p in packages:
        if not have_lists:
            continue
        if package_exists(p):
            continue
        if NVIDIA_PACKAGE.match(p) and not have_nvidia:
            note(f"{df}: {p} not checked: NVIDIA's CUDA repository is not configured here")
            continue
        fail(df, f"stage {stage.name or stage.index}: apt-get install {p}: no such package in Debian 12")


def check_runtime(df, stages, build_dir):
    final = stages[-1]
    copies = copy_destinations(final)
    packages, no_recommends = apt_installs(final)
    if not no_recommends:
        fail(df, "runtime stage: apt-get install without --no-install-recommends (pulls in Recommends)")

    # No build tools: the packages named and everything they depend on.
    closure = dependency_closure(packages)
    for p in sorted(closure):
        if COMPILERS.search(p):
            fail(df, f"runtime stage installs a compiler or -dev package: {p}"
                     + ("" if p in packages else " (as a dependency)"))

    # Layout.
    for prog in PROGRAMS:
        path = f"{BIN_DIR}/{prog}"
        if path not in copies:
            fail(df, f"runtime stage does not copy {path}")
    for path in (MODEL_DIR, FLAG_FILE):
        if path not in copies:
            fail(df, f"runtime stage does not copy {path}")
    if FLAG_FILE in copies and copies[FLAG_FILE][1] != "deploy/trams-server.flags":
        fail(df, f"{FLAG_FILE} comes from {copies[FLAG_FILE][1]}, not deploy/trams-server.flags")

    # Build outputs copied from the build stage must be built there.
    for dest, (flags, src) in copies.items():
        if "from" not in flags:
            continue
        source_stage = next((s for s in stages if s.name == flags["from"]), None)
        if source_stage is None:
            continue
        built = " ".join(t for k, t in source_stage.instructions if k == "RUN")
        target = ARTIFACT_TARGETS.get(os.path.basename(src))
        if target is None:
            fail(df, f"COPY --from={flags['from']} {src}: not a known build output")
        elif not re.search(r"--target\b[^&;]*\b" + re.escape(target) + r"(\s|$)", built):
            fail(df, f"COPY --from={flags['from']} {src}: the build stage never builds target {target}")

    # USER: numeric (Kubernetes' runAsNonRoot cannot check a name), not root, and created in the image.
    users = [t for k, t in final.instructions if k == "USER"]
    if not users:
        fail(df, "runtime stage has no USER: the server would run as root")
    else:
        uid, _, gid = users[-1].partition(":")
        if uid in ("0", "root") or gid in ("0", "root"):
            fail(df, f"USER {users[-1]} is root")
        elif uid != UID:
            fail(df, f"USER {users[-1]}: expected {UID}:{UID} (the Kubernetes manifests' runAsUser)")
        runs = " ".join(t for k, t in final.instructions if k == "RUN")
        if not re.search(r"useradd\b[^&;]*--uid\s+" + UID, runs):
            fail(df, f"runtime stage never creates user {UID} (useradd --uid {UID})")

    # HEALTHCHECK through the client's grpc.health.v1 check, a program copied into the image.
    checks = [t for k, t in final.instructions if k == "HEALTHCHECK"]
    if not checks:
        fail(df, "runtime stage has no HEALTHCHECK")
    else:
        cmd = re.sub(r"^(--\S+\s+)*CMD\s+", "", checks[-1])
        argv = exec_form(cmd) or shlex.split(cmd)
        if checks[-1].strip().upper() == "NONE" or not argv:
            fail(df, "HEALTHCHECK NONE")
        elif os.path.basename(argv[0]) != "trams-client" or "health" not in argv:
            fail(df, f"HEALTHCHECK does not run `trams-client ... health`: {argv}")
        elif argv[0] not in copies:
            fail(df, f"HEALTHCHECK runs {argv[0]}, which the runtime stage does not copy in")

    # ENTRYPOINT: exec form (signals reach the server, not a shell), a program copied in.
    entry = [t for k, t in final.instructions if k == "ENTRYPOINT"]
    argv = exec_form(entry[-1]) if entry else None
    if not argv:
        fail(df, "ENTRYPOINT missing or not in exec form (SIGTERM must reach trams-server to drain)")
    elif argv[0] != f"{BIN_DIR}/trams-server":
        fail(df, f"ENTRYPOINT {argv[0]}: expected {BIN_DIR}/trams-server")
    elif argv[0] not in copies:
        fail(df, f"ENTRYPOINT {argv[0]} is not copied into the runtime stage")

    cmds = [t for k, t in final.instructions if k == "CMD"]
    cmd = exec_form(cmds[-1]) if cmds else None
    if not cmd:
        fail(df, "CMD missing or not in exec form")
    else:
        if f"--flagfile={FLAG_FILE}" not in cmd:
            fail(df, f"CMD does not read --flagfile={FLAG_FILE}: {cmd}")
        for flag, port in (("--listen", "50051"), ("--metrics_listen", "9464")):
            if f"{flag}=0.0.0.0:{port}" not in cmd:
                fail(df, f"CMD does not set {flag}=0.0.0.0:{port} (the flag file listens on 127.0.0.1): {cmd}")

    exposed = set(" ".join(t for k, t in final.instructions if k == "EXPOSE").replace("/tcp", "").split())
    if not PORTS <= exposed:
        fail(df, f"EXPOSE {sorted(exposed)}: expected {sorted(PORTS)}")

    # The CUDA image: the module is built, copied, and where the loader (engine/cuda/cuda_loader.cc) looks:
    # $TRAMS_CUDA_MODULE, else beside the executable or one folder up.
    wants_cuda = df.endswith(".cuda")
    module_dests = [d for d in copies if os.path.basename(d) == CUDA_MODULE]
    if wants_cuda:
        builds = " ".join(t for s in stages[:-1] for k, t in s.instructions if k == "RUN")
        if "-DTRAMS_WITH_CUDA=ON" not in builds:
            fail(df, "the build stage does not configure -DTRAMS_WITH_CUDA=ON")
        looked_at = {final.args.get("TRAMS_CUDA_MODULE"), f"{BIN_DIR}/{CUDA_MODULE}",
                     f"{os.path.dirname(BIN_DIR)}/{CUDA_MODULE}"}
        if not module_dests:
            fail(df, f"runtime stage does not copy {CUDA_MODULE}")
        elif not set(module_dests) & looked_at:
            fail(df, f"{CUDA_MODULE} is copied to {module_dests}, where the loader does not look "
                     f"(set TRAMS_CUDA_MODULE, or put it beside {BIN_DIR}/trams-server)")
        caps = final.args.get("NVIDIA_DRIVER_CAPABILITIES", "")
        if "compute" not in caps and "all" not in caps:
            fail(df, "NVIDIA_DRIVER_CAPABILITIES lacks compute: the container toolkit would not mount libcuda")
    elif module_dests:
        fail(df, f"the host image copies {CUDA_MODULE}")

    # Libraries: ldd of each program the image carries, each library's package in the runtime closure.
    if build_dir is None:
        return
    binaries = [os.path.join(build_dir, "server", "trams-server"), os.path.join(build_dir, "client", "trams-client"),
                os.path.join(build_dir, "engine", "trams-eval")]
    if wants_cuda and os.path.exists(os.path.join(build_dir, CUDA_MODULE)):
        binaries.append(os.path.join(build_dir, CUDA_MODULE))
    elif wants_cuda:
        note(f"{df}: {build_dir}/{CUDA_MODULE} not built here: its libraries are not checked")
    libraries = {b: ldd_libraries(b) for b in binaries if os.path.exists(b)}
    load_library_packages(p for libs in libraries.values() for p in libs.values() if p)
    for binary in binaries:
        if binary not in libraries:
            fail(df, f"{binary} does not exist (build it first)")
            continue
        for soname, path in sorted(libraries[binary].items()):
            if path is None:
                fail(df, f"ldd {binary}: {soname} not found on this machine")
                continue
            package = library_package(path)
            if package is None:
                expected = CUDA_SONAME_PACKAGES.get(soname)
                if expected is None:
                    fail(df, f"{os.path.basename(binary)} needs {path}, which no Debian package holds")
                elif expected not in packages:
                    fail(df, f"{os.path.basename(binary)} needs {soname}: the runtime stage must install "
                             f"{expected} (NVIDIA's repository)")
                continue
            if package in closure:
                continue
            if (installed_field(package, "Priority") or "").strip() == "required":
                continue  # in every Debian base image
            fail(df, f"{os.path.basename(binary)} needs {soname} from package {package}, which the runtime "
                     f"stage neither installs nor gets as a dependency")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    root = os.path.abspath(sys.argv[1])
    build_dir = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None
    patterns = load_dockerignore(root)
    if not patterns:
        fail(".dockerignore", "missing or empty: `COPY . .` would send every build tree and .git")

    # The context: small, and the sources the build stage compiles are in it.
    size = context_bytes(root, patterns)
    print(f"build context: {size / 2**20:.1f} MiB after .dockerignore")
    if size > MAX_CONTEXT_BYTES:
        fail(".dockerignore", f"the build context is {size / 2**20:.0f} MiB (> {MAX_CONTEXT_BYTES >> 20} MiB): "
                              "a build tree, .git or installed packages are not excluded")
    tracked = run(["git", "-C", root, "ls-files"]).stdout.split()
    for f in tracked:
        if re.search(r"(CMakeLists\.txt|\.cmake|\.cc|\.h|\.cu|\.cuh|\.proto)$", f) and excluded(f, patterns):
            fail(".dockerignore", f"excludes {f}, which the build needs")
            break

    have_lists = apt_lists_present()
    if not have_lists:
        note("apt lists are empty (run apt-get update): package existence in Debian 12 is not checked")
    have_nvidia = nvidia_repo_configured() if have_lists else False
    parsed = {df: parse_dockerfile(os.path.join(root, df)) for df in DOCKERFILES
              if os.path.exists(os.path.join(root, df))}
    if have_lists:
        load_known_packages(p for stages in parsed.values() for s in stages for p in apt_installs(s)[0])
    deps = open(os.path.join(root, "deploy", "deps.sh")).read()
    m = re.search(r"build_pkgs=\(([^)]*)\)", deps)
    deps_build_packages = m.group(1).split() if m else []
    if not deps_build_packages:
        fail("deploy/deps.sh", "no build_pkgs=(...) array found")

    for df in DOCKERFILES:
        if df not in parsed:
            fail(df, "missing")
            continue
        stages = parsed[df]
        if len(stages) < 2:
            fail(df, f"{len(stages)} stage(s): expected a build stage and a runtime stage")
            continue
        check_context(df, stages, root, patterns)
        for stage in stages:
            packages, _ = apt_installs(stage)
            check_packages_exist(df, stage, packages, have_lists, have_nvidia)
        build = next((s for s in stages if s.name == "build"), stages[0])
        check_build_stage(df, build, deps_build_packages)
        check_runtime(df, stages, build_dir)

    print(f"{len(failures)} failure(s), {len(notes)} note(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
