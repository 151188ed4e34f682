"""kvfs(1) and `kvfs --help` list the same options.

The man page's source is docs/kvfs.1.scd (scdoc; meson builds kvfs.1 from
it).  Its conventions, stated at its top: under OPTIONS an option is a line
starting with "*-"; under "## Backend options" a backend is the line
"*SCHEME*" and its options the indented "*name=*" lines below it.  A test
fails when either side lists an option the other lacks, for kvfs's own
options (with those mount(8) adds), libfuse's passed-on options, and each
compiled-in backend's options; and when a URL form `kvfs --backends`
prints, or an environment variable the sources read, is not in the page.
"""
import os
import re
import subprocess

import pytest

from util import KVFS_BIN, REPO

SOURCE = REPO / "docs" / "kvfs.1.scd"


def run(*args):
    r = subprocess.run([KVFS_BIN] + list(args), capture_output=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


# ---- kvfs --help ----

FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])(?![\w-])")
O_OPT = re.compile(r"-o ([\w,=.\[\]]+)")


def names_in(text):
    """The option names in a line of text: -x, --long, and every name in
    -o a=X,b,c=Y (without the values)."""
    found = set()
    for m in O_OPT.finditer(text):
        for part in m.group(1).split(","):
            name = part.split("=")[0]
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                found.add(name)
    rest = O_OPT.sub(" ", text)
    found |= {f for f in FLAG.findall(rest) if f != "-o"}
    return found


def parse_help(text):
    """{'kvfs': names, 'libfuse': names, 'backend:SCHEME': names} of --help."""
    out = {"kvfs": set(), "libfuse": set()}
    section = None
    for line in text.splitlines():
        if line.startswith("kvfs options:"):
            section = "kvfs"
        elif line.startswith("Backend options"):
            section = "backends"
        elif line.startswith("libfuse"):
            section = "libfuse"
        elif not line.strip():
            if section in ("libfuse",):
                section = None
        elif section == "kvfs" and line.startswith("    "):
            # an option, two or more blanks, its description (which may
            # mention options too); a continuation line has no option
            left = re.split(r"\s{2,}", line.strip())[0]
            if left.startswith("-"):
                out["kvfs"] |= names_in(left)
        elif section == "backends" and line.startswith("    "):
            words = line.split()
            out["backend:" + words[0]] = set(words[1:])
        elif section == "libfuse":
            out["libfuse"] |= {w.split("=")[0] for w in line.split()}
        elif line and not line.startswith(" "):
            section = None
    return out


# ---- the man page's source ----

def parse_source(text):
    """The same dictionary, from docs/kvfs.1.scd."""
    out = {"kvfs": set(), "libfuse": set()}
    section = sub = backend = None
    for line in text.splitlines():
        if line.startswith("# "):
            section, sub, backend = line[2:].strip(), None, None
            continue
        if line.startswith("## "):
            sub, backend = line[3:].strip(), None
            continue
        if section != "OPTIONS" or sub is None:
            continue
        plain = line.replace("*", "").replace("\\", "")
        plain = re.sub(r"(?<![\w])_([^_]+)_", r"\1", plain)
        if sub == "Backend options":
            m = re.fullmatch(r"\*([a-z][a-z0-9+.-]*)\*", line)
            if m:
                backend = "backend:" + m.group(1)
                out.setdefault(backend, set())
            elif backend and re.match(r"\t\*[a-z_]+=", line):
                out[backend] |= set(re.findall(r"(?:^|, )([a-z_]+)=", plain.strip()))
        elif line.startswith("*-"):
            key = "libfuse" if sub.startswith("libfuse") else "kvfs"
            out[key] |= names_in(plain)
    return out


@pytest.fixture(scope="module")
def help_options():
    return parse_help(run("--help"))


@pytest.fixture(scope="module")
def page_options():
    return parse_source(SOURCE.read_text())


@pytest.fixture(scope="module")
def compiled():
    return [ln.split()[0] for ln in run("--backends").splitlines() if ln.strip()]


def differ(what, in_help, in_page):
    msgs = []
    if in_help - in_page:
        msgs.append("%s: in `kvfs --help` but not in kvfs(1): %s"
                    % (what, " ".join(sorted(in_help - in_page))))
    if in_page - in_help:
        msgs.append("%s: in kvfs(1) but not in `kvfs --help`: %s"
                    % (what, " ".join(sorted(in_page - in_help))))
    return msgs


def test_the_parsers_find_what_is_certainly_there(help_options, page_options):
    """Guards the test itself: a parser that finds nothing would agree with
    anything."""
    for side in (help_options, page_options):
        assert {"-f", "-d", "--help", "root", "logfile", "loglevel", "_netdev",
                "entry_timeout"} <= side["kvfs"]
        assert {"allow_other", "max_write", "fsname"} <= side["libfuse"]
        assert {"map_size", "sync"} <= side["backend:lmdb"]


def test_kvfs_options_are_the_same(help_options, page_options):
    # --help also shows ro among kvfs's own options; the page has it among
    # libfuse's.
    in_help = help_options["kvfs"] - help_options["libfuse"]
    in_page = page_options["kvfs"] - page_options["libfuse"]
    assert not differ("kvfs options", in_help, in_page)


def test_libfuse_options_are_the_same(help_options, page_options):
    assert not differ("libfuse options", help_options["libfuse"], page_options["libfuse"])


def test_backend_options_are_the_same(help_options, page_options, compiled):
    msgs = []
    for scheme in compiled:
        key = "backend:" + scheme
        if key not in page_options:
            msgs.append("backend %s: no entry under 'Backend options' in kvfs(1)" % scheme)
            continue
        msgs += differ(key, help_options.get(key, set()), page_options[key])
    for key in help_options:
        if key.startswith("backend:") and key[8:] not in compiled:
            msgs.append("%s: in --help but not in --backends" % key)
    assert not msgs, "\n".join(msgs)


def test_every_url_form_is_in_the_page(compiled):
    page = SOURCE.read_text().replace("\\", "")
    urls = page[page.index("\n# URLS"):page.index("\n# ENVIRONMENT")]
    missing = []
    for line in run("--backends").splitlines():
        if line.strip():
            form = line[11:51].strip()      # the usage column
            if "*" + form + "*" not in urls:
                missing.append(form)
    assert not missing, "URL forms of --backends missing under URLS: %s" % missing


def source_env_names():
    """Environment variables the C sources read: getenv("NAME"), the
    NAME_ENV "NAME" macros, and the *_env[] = {"NAME", ...} tables."""
    names = set()
    for d in ("mount", "fs", "backends"):
        for f in sorted((REPO / d).glob("*.c")):
            text = f.read_text(errors="replace")
            names |= set(re.findall(r'getenv\(\s*"([A-Z0-9_]+)"\s*\)', text))
            names |= set(re.findall(r'#define\s+\w+_ENV\s+"([A-Z0-9_]+)"', text))
            for table in re.findall(r'\w*_env\s*\[[^\]]*\]\s*=\s*\{([^}]*)\}', text):
                names |= set(re.findall(r'"([A-Z0-9_]+)"', table))
    return names


def test_every_environment_variable_is_in_the_page():
    page = SOURCE.read_text()
    env = page[page.index("\n# ENVIRONMENT"):page.index("\n# FILES")]
    names = source_env_names()
    assert {"XDG_DATA_HOME", "HOME"} <= names, names
    missing = sorted(n for n in names if "*" + n + "*" not in env)
    assert not missing, "read by kvfs but not under ENVIRONMENT in kvfs(1): %s" % missing


def test_the_built_page_is_the_source(compiled):
    """meson made kvfs.1 next to the binary (when scdoc was found): it
    carries the version and every option of the source."""
    page = os.path.join(os.path.dirname(KVFS_BIN), "kvfs.1")
    if not os.path.exists(page):
        pytest.skip("no kvfs.1 in the build (scdoc missing?)")
    text = open(page, encoding="utf-8").read()
    assert '"kvfs %s"' % run("--version").split()[1] in text
    plain = re.sub(r"\\f[BIRP]|\\&|\\", "", text)
    for name in ("logfile=", "loglevel=", "map_size=", "fuse.kvfs defaults,_netdev 0 0",
                 "mount -t fuse.kvfs"):
        assert name in plain, name
