"""The image allowlist's decision in plain Python, free of bindings and host calls so it
unit-tests under any CPython (``python3 -m unittest`` in this directory).

A line-by-line port of ``plugins/image-allowlist/src/allowlist.rs`` and the SDK's image
parsing (``plugins/sdk/src/image.rs``): same settings, same answers, same messages, so both
plugins pass the same case file (``plugins/image-allowlist/cases/``). Rust's notions of
whitespace, control characters and ASCII case are reproduced exactly where Python's differ.
"""

import json

# Rust's `char::is_whitespace` (Unicode White_Space); Python's `str.isspace` also counts
# U+001C..U+001F, which Rust does not.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


def _is_control(c):
    return c <= "\x1f" or "\x7f" <= c <= "\x9f"


def _has_space_or_control(text):
    return any(c in _RUST_WHITESPACE or _is_control(c) for c in text)


def canonical_registry(host):
    """A registry host lower-cased (ASCII only), with Docker Hub's aliases as ``docker.io``."""
    host = host.translate(_ASCII_LOWER)
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def normalise_image(image):
    """``registry/repository`` of a Docker reference, without tag or digest, with Docker
    Hub's short forms spelled out (``alpine`` -> ``docker.io/library/alpine``); ``None`` for
    an empty or malformed reference."""
    image = image.strip(_RUST_WHITESPACE)
    rest, at, digest = image.partition("@")
    colon = rest.rfind(":")
    tag = None
    name = rest
    if colon >= 0 and "/" not in rest[colon:]:
        name, tag = rest[:colon], rest[colon + 1 :]
    if not name or name.startswith("/") or name.endswith("/") or "//" in name:
        return None
    if _has_space_or_control(image):
        return None
    if tag == "" or (at and digest == ""):
        return None
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry = canonical_registry(first)
        if registry == "docker.io" and "/" not in remainder:
            return "docker.io/library/" + remainder
        return registry + "/" + remainder
    if "/" in name:
        return "docker.io/" + name
    return "docker.io/library/" + name


def _normalise_prefix(entry):
    trimmed = entry.strip(_RUST_WHITESPACE).rstrip("/")

    def bad(why):
        return ValueError("allowed_registries entry %s: %s" % (_rust_debug(entry), why))

    if not trimmed:
        raise bad("is empty")
    if "://" in trimmed:
        raise bad('write the registry host without a scheme, e.g. "registry.example.com"')
    if "@" in trimmed or _has_space_or_control(trimmed):
        raise bad("is not a registry host or repository prefix")
    host, slash, path = trimmed.partition("/")
    if slash and (not path or "//" in path or ":" in path):
        raise bad("a repository prefix has no tag and no empty components")
    host = canonical_registry(host)
    return host + "/" + path if slash else host


def _rust_debug(text):
    """Rust's `{:?}` of a string, near enough for messages: JSON quoting."""
    return json.dumps(text, ensure_ascii=False)


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean `%s`" % ("true" if value else "false")
    if isinstance(value, int):
        return "integer `%d`" % value
    if isinstance(value, float):
        return "floating point `%r`" % value
    if isinstance(value, str):
        return "string %s" % _rust_debug(value)
    if isinstance(value, list):
        return "sequence"
    return "map"


class Allowlist:
    """Validated settings: the normalised registry prefixes an image may come from."""

    def __init__(self, prefixes):
        self.prefixes = prefixes

    @staticmethod
    def from_settings(text):
        """Parse and validate ``{"allowed_registries": [...]}``; raises ``ValueError`` with a
        message naming the entry at fault."""
        usage = 'settings must be {"allowed_registries": ["registry", ...]}: '
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise ValueError(usage + str(e)) from None
        if not isinstance(raw, dict):
            raise ValueError(usage + "invalid type: %s, expected struct RawSettings" % _json_type(raw))
        for key in raw:
            if key != "allowed_registries":
                raise ValueError(usage + "unknown field `%s`, expected `allowed_registries`" % key)
        if "allowed_registries" not in raw:
            raise ValueError(usage + "missing field `allowed_registries`")
        entries = raw["allowed_registries"]
        if not isinstance(entries, list):
            raise ValueError(usage + "invalid type: %s, expected a sequence" % _json_type(entries))
        for entry in entries:
            if not isinstance(entry, str):
                raise ValueError(usage + "invalid type: %s, expected a string" % _json_type(entry))
        if not entries:
            raise ValueError("allowed_registries is empty: every job would be refused")
        return Allowlist([_normalise_prefix(entry) for entry in entries])

    def allows(self, image):
        """Whether ``image`` comes from an allowed registry; prefixes match whole path
        components only."""
        repository = normalise_image(image)
        if repository is None:
            return False
        return any(repository == p or repository.startswith(p + "/") for p in self.prefixes)

    def describe(self):
        return ", ".join(self.prefixes)


def first_refusal(allowlist, containers):
    """The message for the first ``(name, image)`` whose image is not allowed, else ``None``."""
    for name, image in containers:
        if not allowlist.allows(image):
            return (
                "image `%s` of container `%s` is not from an allowed registry; "
                "this runner only runs images from: %s" % (image, name, allowlist.describe())
            )
    return None
