"""What a scope does to a model, grouped so that a whole model fits on a screen.

Parameters of repeated parts are grouped by replacing the digits that end a path
component with ``*`` (``blocks.3.mlp.fc1.weight`` -> ``blocks.*.mlp.fc*.weight``,
``layer2.0.bn1.bias`` -> ``layer*.*.bn*.bias``); parameters of one pattern with the
same role and reason form one row, their attributes listed together
(``blocks.*.norm*.{weight,bias}``). ``--json`` has every tensor's role.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from torch import nn

from fps_profile.models.parts import find_classifier
from fps_profile.selection.scope import Role, Scope, explain_roles, get_scope
from fps_profile.units import markdown_table


@dataclass
class Group:
    """Parameters sharing a name pattern, a role and a reason."""

    pattern: str
    role: str
    why: str
    tensors: int = 0
    params: int = 0
    attrs: list[str] = field(default_factory=list)


@dataclass
class ScopeReport:
    """Every parameter's role in one model under one scope.

    Attributes:
        model: Model name.
        scope: Scope name.
        classifier: Classifier module names and where they came from.
        params_total: Parameters of the model (count).
        roles: ``role -> {"tensors": n, "params": n}``.
        groups: Grouped parameters, in model order.
        tensors: Every parameter name -> role.
    """

    model: str
    scope: str
    classifier: dict
    params_total: int
    roles: dict[str, dict[str, int]]
    groups: list[Group]
    tensors: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A table of the groups, then one line per role."""
        total = max(self.params_total, 1)
        rows = []
        for g in self.groups:
            attrs = g.attrs[0] if len(g.attrs) == 1 else "{" + ",".join(g.attrs) + "}"
            name = f"{g.pattern}.{attrs}" if g.pattern else attrs
            rows.append([g.role, str(g.tensors), f"{g.params:,}", f"{100 * g.params / total:.2f}%", g.why, name])
        if self.classifier["source"] == "names":
            clf = "names containing 'head' (no timm metadata)"
        elif self.classifier["source"] == "causal-lm":
            clf = "none (a causal language model: lm_head is its output embedding)"
        else:
            clf = f"{', '.join(self.classifier['modules']) or 'none'} (from {self.classifier['source']})"
        lines = [f"{self.model}: scope {self.scope}; classifier: {clf}", "",
                 markdown_table(["role", "tensors", "params", "share", "why", "parameters"], rows), ""]
        for role in Role:
            r = self.roles.get(role.value, {"tensors": 0, "params": 0})
            lines.append(f"{role.value:<9} {r['tensors']:>5} tensors {r['params']:>14,} parameters "
                         f"({100 * r['params'] / total:.2f}%)")
        return "\n".join(lines)


def _pattern(module_name: str) -> str:
    return re.sub(r"\d+(?=\.|$)", "*", module_name)


def scope_report(model: nn.Module, scope: str | Scope, model_name: str | None = None) -> ScopeReport:
    """Group every parameter of ``model`` by pattern, role and reason under ``scope``."""
    scope = get_scope(scope)
    params = dict(model.named_parameters())
    groups: dict[tuple, Group] = {}
    roles: dict[str, dict[str, int]] = {}
    tensors = {}
    for name, (role, why, _, attr) in explain_roles(model, scope).items():
        n = params[name].numel()
        module_name = name[: -len(attr) - 1] if name.endswith("." + attr) else ""
        key = (_pattern(module_name), role.value, why)
        g = groups.setdefault(key, Group(key[0], role.value, why))
        g.tensors += 1
        g.params += n
        if attr not in g.attrs:
            g.attrs.append(attr)
        r = roles.setdefault(role.value, {"tensors": 0, "params": 0})
        r["tensors"] += 1
        r["params"] += n
        tensors[name] = role.value
    clf = find_classifier(model)
    return ScopeReport(model=model_name or type(model).__name__, scope=scope.name,
                       classifier={"modules": list(clf.modules), "source": clf.source},
                       params_total=sum(p.numel() for p in params.values()), roles=roles,
                       groups=list(groups.values()), tensors=tensors)
