"""Checks that session_ext's modules form layers: no module imports, directly or through
others, a module that imports it back. A module is a top-level file or directory of src/; an
import is any `crate::NAME` path in its code (comments aside). Prints the import graph's
circles and exits 1 if there are any."""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1])
modules = {}
for path in src.rglob("*.rs"):
    relative = path.relative_to(src)
    if relative.parts == ("lib.rs",):
        continue
    name = relative.parts[0].removesuffix(".rs")
    code = re.sub(r"//[^\n]*", "", path.read_text())
    modules.setdefault(name, set()).update(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
graph = {m: sorted(i for i in imports if i in modules and i != m) for m, imports in modules.items()}

# Tarjan's strongly connected components: a component of more than one module is a circle.
index, low, stack, on_stack, circles = {}, {}, [], set(), []


def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in graph[module]:
        if imported not in index:
            visit(imported)
            low[module] = min(low[module], low[imported])
        elif imported in on_stack:
            low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
        component = []
        while True:
            member = stack.pop()
            on_stack.discard(member)
            component.append(member)
            if member == module:
                break
        if len(component) > 1:
            circles.append(sorted(component))


for module in sorted(graph):
    if module not in index:
        visit(module)
for circle in circles:
    edges = [f"{m} -> {i}" for m in circle for i in graph[m] if i in circle]
    print(f"import circle among {', '.join(circle)}: {'; '.join(edges)}")
if circles:
    sys.exit(1)
print(f"{len(graph)} modules, no import circles")
