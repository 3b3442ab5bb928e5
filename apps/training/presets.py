"""Hyperparameter presets: the core's built-in ones (read-only) and users' own (team-visible),
saved, cloned, exported and imported as YAML. A preset holds TrainSpec fields without paths;
an imported file's errors name the line and the field."""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.translation import gettext

from apps.accounts.visibility import require_manager, visible_to
from apps.training.models import TrainingPreset  # noqa: F401  (api reads presets.TrainingPreset)
from apps.training.services import PATH_FIELDS, TrainingError
from workers.tasks import catalog

BUILTIN_PREFIX = "builtin:"
MAX_YAML_BYTES = 64 * 2**10  # what the YAML loader accepts (workers/core/yamlsafe.py MAX_BYTES)
MAX_NAME, MAX_DESCRIPTION = 100, 2000


def builtin_presets() -> dict[str, dict]:
    return catalog.training_presets()


def choices(user) -> list[dict]:
    """Every preset a user may start from: {"key", "name", "owner" (None for built-ins), "fields", "description"}."""
    out = [{"key": BUILTIN_PREFIX + name, "name": name, "owner": None, "fields": fields,
            "description": fields.get("description", "") if isinstance(fields.get("description"), str) else ""}
           for name, fields in sorted(builtin_presets().items())]
    for preset in visible_to(TrainingPreset.objects.select_related("owner"), user):
        out.append({"key": str(preset.pk), "name": preset.name, "owner": preset.owner.username,
                    "fields": preset.fields, "description": preset.description, "id": preset.pk})
    return out


def preset_fields(user, key: str) -> tuple[str, dict]:
    """(display name, fields) of a preset key from `choices` (404 for presets the user may not see)."""
    if key.startswith(BUILTIN_PREFIX):
        name = key[len(BUILTIN_PREFIX):]
        fields = builtin_presets().get(name)
        if fields is None:
            raise TrainingError("preset", gettext("no built-in preset named %(name)s") % {"name": repr(name)})
        return name, {k: v for k, v in fields.items() if k != "description"}
    from apps.accounts.visibility import get_visible_or_404

    if not key.isdigit():
        raise TrainingError("preset", gettext("%(key)s is not a preset") % {"key": repr(key)})
    preset = get_visible_or_404(TrainingPreset.objects.all(), user, pk=int(key))
    return preset.name, dict(preset.fields)


def check_fields(fields, where=None) -> dict:
    """Refuse paths, unknown fields and wrong types, naming the field (and, through `where`,
    a field → "line N" map, the YAML line). Ranges between fields are checked again by the
    pre-flight, where the whole spec is known."""
    if not isinstance(fields, dict):
        raise TrainingError("fields", gettext("must be a mapping of field: value"))
    where = where or {}

    def at(name):
        return f"{where[name]}: " if name in where else ""

    for name, value in fields.items():
        if name in PATH_FIELDS:
            raise TrainingError(name, at(name) + gettext("paths are filled in from the chosen versions; a preset may "
                                                         "not set %(name)s") % {"name": name})
        try:
            catalog.validate_params("train", {name: value})
        except catalog.InvalidParams as exc:
            if exc.field == name:  # errors about other (required) fields belong to the whole spec
                raise TrainingError(name, f"{at(name)}{exc.reason}") from None
    return dict(fields)


def save(user, *, name: str, fields: dict, description: str = "", preset: TrainingPreset | None = None) -> TrainingPreset:
    name = (name or "").strip()
    if not name:
        raise TrainingError("name", gettext("name the preset"))
    if len(name) > MAX_NAME:
        raise TrainingError("name", gettext("at most %(max)s characters") % {"max": MAX_NAME})
    if len(description or "") > MAX_DESCRIPTION:
        raise TrainingError("description", gettext("at most %(max)s characters") % {"max": MAX_DESCRIPTION})
    fields = check_fields(fields)
    try:
        with transaction.atomic():
            if preset is not None:
                require_manager(user, preset, "preset")
                preset.name, preset.description, preset.fields = name, description, fields
                preset.save()
                return preset
            return TrainingPreset.objects.create(owner=user, name=name, description=description, fields=fields)
    except IntegrityError:
        raise TrainingError("name", gettext("you already have a preset named %(name)s")
                            % {"name": repr(name)}) from None


def clone(user, key: str, new_name: str = "") -> TrainingPreset:
    name, fields = preset_fields(user, key)
    base = (new_name or f"{name} (copy)").strip()
    candidate, n = base, 2
    while TrainingPreset.objects.filter(owner=user, name=candidate).exists():
        candidate, n = f"{base} {n}", n + 1
    return save(user, name=candidate, fields=fields)


def export_yaml(name: str, fields: dict, description: str = "") -> str:
    import yaml

    return yaml.safe_dump({"name": name, "description": description, "fields": fields}, sort_keys=False, allow_unicode=True)


def parse_yaml(text: str) -> dict:
    """{"name", "description", "fields"} from an exported file; errors name the line and field.
    The text is bounded (size, nesting, aliases) before it is built: see catalog.load_yaml."""
    import yaml

    try:
        data, root = catalog.load_yaml(text, "yaml")
    except catalog.InvalidParams as exc:
        raise TrainingError(exc.field, exc.reason) from None
    if root is None or not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        raise TrainingError("yaml", "line 1: " + gettext("expected a mapping with name, description and fields"))
    top = {key.value: value for key, value in scalar_keys(root, "yaml")}
    unknown = [key for key, _ in root.value if key.value not in ("name", "description", "fields")]
    if unknown:
        raise TrainingError(str(unknown[0].value)[:100], f"line {unknown[0].start_mark.line + 1}: "
                            + gettext("unknown key (allowed: name, description, fields)"))
    if "fields" not in top or not isinstance(top["fields"], yaml.MappingNode):
        line = top["fields"].start_mark.line + 1 if "fields" in top else 1
        raise TrainingError("fields", f"line {line}: " + gettext("`fields` must be a mapping of field: value"))
    where = {key.value: f"line {key.start_mark.line + 1}" for key, _ in scalar_keys(top["fields"], "fields")}
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        line = top["name"].start_mark.line + 1 if "name" in top else 1
        raise TrainingError("name", f"line {line}: " + gettext("`name` must be a non-empty string"))
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise TrainingError("description", f"line {top['description'].start_mark.line + 1}: " + gettext("must be a string"))
    return {"name": name.strip(), "description": description, "fields": check_fields(data["fields"], where)}


def scalar_keys(mapping, field: str) -> list:
    """The (key, value) nodes of a YAML mapping node whose keys are all plain scalars (a `? [a]`
    key or a `<<` merge would otherwise reach the line maps as unhashable or foreign values)."""
    import yaml

    for key, _ in mapping.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            raise TrainingError(field, f"line {key.start_mark.line + 1}: " + gettext("keys must be plain names"))
    return mapping.value


def import_yaml(user, text: str) -> TrainingPreset:
    parsed = parse_yaml(text)
    return save(user, **parsed)
