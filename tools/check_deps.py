#!/usr/bin/env python3
"""Checks that the CMake link graph says the same as the includes (STYLE.md §2-§3).

For every library folder (src/<concern> + include/lowsync/<concern>) it collects the lowsync
concerns and the third-party headers it includes, and compares them with the DEPS of its
lowsync_add_library() line in CMakeLists.txt. Reports, one line each:
  missing  <lib> includes <dep> but does not reach it through its links (direct or PUBLIC chain)
  unused   <lib> links <dep> but includes nothing of it
  cycle    the include graph has a cycle through <lib>
Exit status 1 when anything is reported. Usage: tools/check_deps.py [repo root]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
cmake = (root / "CMakeLists.txt").read_text()

# Third-party imported targets and the headers that prove a folder uses them.
THIRD_PARTY = {
    "Kokkos::kokkos": [r"Kokkos_"],
    "fmt::fmt": [r"fmt/"],
    "spdlog::spdlog": [r"spdlog/"],
    "MPI::MPI_CXX": [r"mpi\.h"],
    "tomlplusplus::tomlplusplus": [r"toml\+\+/"],
    "ZLIB::ZLIB": [r"zlib\.h"],
    "DNNL::dnnl": [r"dnnl|oneapi/dnnl"],
    "hdf5::hdf5": [r"hdf5\.h|H5"],
    "OpenMP::OpenMP_CXX": [r"omp\.h"],
    "NCCL::NCCL": [r"nccl\.h"],
}

deps = {}
for m in re.finditer(r"lowsync_add_library\((\w+)\s+DEPS([^)]*)\)", cmake):
    deps[m.group(1)] = set(m.group(2).split())
# Only the DEPS lines: optional backends linked under if() (NCCL) are not checked.

def sources(concern):
    for base in (root / "src" / concern, root / "include" / "lowsync" / concern):
        if base.is_dir():
            yield from (p for p in base.rglob("*") if p.suffix in (".cpp", ".hpp"))

includes = {}
third = {}
for concern in deps:
    inc, ext = set(), set()
    for path in sources(concern):
        for line in path.read_text().splitlines():
            m = re.match(r'\s*#\s*include\s*[<"]([^>"]+)[>"]', line)
            if not m:
                continue
            header = m.group(1)
            if header.startswith("lowsync/"):
                part = header.split("/")[1]
                if part in deps and part != concern:
                    inc.add(part)
            else:
                for target, patterns in THIRD_PARTY.items():
                    if any(re.match(p, header) for p in patterns):
                        ext.add(target)
    includes[concern], third[concern] = inc, ext

def direct(concern):
    return {d.split("::")[1] for d in deps[concern] if d.startswith("lowsync::") and d != "lowsync::options"}

def reach(concern):
    """Every lowsync library and third-party target `concern` links, directly or through PUBLIC."""
    libs, ext, todo = set(), set(), [concern]
    while todo:
        c = todo.pop()
        for d in deps[c]:
            if d == "lowsync::options":
                continue
            if d.startswith("lowsync::"):
                name = d.split("::")[1]
                if name not in libs:
                    libs.add(name)
                    todo.append(name)
            else:
                ext.add(d)
    return libs, ext

problems = []
for concern in sorted(deps):
    linked = direct(concern)
    linked_ext = {d for d in deps[concern] if not d.startswith("lowsync::")}
    reached, reached_ext = reach(concern)
    for d in sorted(includes[concern] - reached):
        problems.append(f"missing  {concern} includes lowsync/{d}/ but does not link lowsync::{d} (directly or through its links)")
    for d in sorted(linked - includes[concern]):
        problems.append(f"unused   {concern} links lowsync::{d} but includes nothing of it")
    for d in sorted(third[concern] - reached_ext):
        problems.append(f"missing  {concern} includes {d} headers but does not link {d}")
    for d in sorted(linked_ext - third[concern]):
        problems.append(f"unused   {concern} links {d} but includes none of its headers")

def find_cycle(node, stack, seen):
    if node in stack:
        return stack[stack.index(node):] + [node]
    if node in seen:
        return None
    seen.add(node)
    for d in sorted(includes[node]):
        c = find_cycle(d, stack + [node], seen)
        if c:
            return c
    return None

seen = set()
for concern in sorted(deps):
    c = find_cycle(concern, [], seen)
    if c:
        problems.append("cycle    " + " -> ".join(c))
        break

for p in problems:
    print(p)
print(f"check_deps: {len(problems)} problem(s) in {len(deps)} libraries")
sys.exit(1 if problems else 0)
