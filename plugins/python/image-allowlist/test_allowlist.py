"""Native unit tests of allowlist.py (the same checks as the Rust plugin's and SDK's):
``cd plugins/python/image-allowlist && python3 -m unittest``."""

import json
import unittest

from allowlist import Allowlist, first_refusal, normalise_image


def allowlist(*entries):
    return Allowlist.from_settings(json.dumps({"allowed_registries": list(entries)}))


def settings_error(text):
    with unittest.TestCase().assertRaises(ValueError) as raised:
        Allowlist.from_settings(text)
    return str(raised.exception)


class ImageReferences(unittest.TestCase):
    def test_docker_hub_short_names_are_spelled_out(self):
        for image, name in [
            ("alpine", "docker.io/library/alpine"),
            ("alpine:3.20", "docker.io/library/alpine"),
            ("bitnami/redis:7", "docker.io/bitnami/redis"),
            ("docker.io/alpine", "docker.io/library/alpine"),
            ("index.docker.io/library/alpine", "docker.io/library/alpine"),
            ("Registry-1.Docker.IO/user/app", "docker.io/user/app"),
        ]:
            self.assertEqual(normalise_image(image), name, image)

    def test_tags_digests_and_ports_are_told_apart(self):
        self.assertEqual(normalise_image("registry.example.com:5000/team/app:1.2"), "registry.example.com:5000/team/app")
        self.assertEqual(normalise_image("localhost:5000/app"), "localhost:5000/app")
        self.assertEqual(normalise_image("localhost/app"), "localhost/app")
        self.assertEqual(normalise_image("ghcr.io/org/app:v1@sha256:0123456789abcdef"), "ghcr.io/org/app")

    def test_malformed_references_are_never_allowed(self):
        for bad in ["", "   ", "/app", "app/", "a//b", "docker.io/ app", "app:", "app@", "a\x07b"]:
            self.assertIsNone(normalise_image(bad), repr(bad))
            self.assertFalse(allowlist("docker.io").allows(bad), repr(bad))

    def test_whitespace_and_case_follow_rust(self):
        # U+001F is whitespace to Python but a control character to Rust: refused either way.
        self.assertIsNone(normalise_image("alpine\x1f"))
        self.assertEqual(normalise_image("\u3000alpine\u3000"), "docker.io/library/alpine")
        # Only ASCII letters fold: a Kelvin sign (U+212A) stays as it is, as in Rust.
        self.assertEqual(normalise_image("\u212a.io/app"), "\u212a.io/app")


class Policy(unittest.TestCase):
    def test_docker_hub_allows_short_names_but_not_other_registries(self):
        policy = allowlist("docker.io")
        self.assertTrue(policy.allows("alpine:3.20"))
        self.assertTrue(policy.allows("bitnami/redis"))
        self.assertFalse(policy.allows("quay.io/prometheus/node-exporter"))
        self.assertFalse(policy.allows("docker.io.evil.example/library/alpine"))

    def test_repository_prefixes_match_whole_components(self):
        policy = allowlist("registry.gitlab.com/my-group/", "docker.io/library")
        self.assertTrue(policy.allows("registry.gitlab.com/my-group/app:1"))
        self.assertTrue(policy.allows("registry.gitlab.com/my-group/sub/app"))
        self.assertFalse(policy.allows("registry.gitlab.com/my-groupie/app"))
        self.assertFalse(policy.allows("registry.gitlab.com/other/app"))
        self.assertTrue(policy.allows("alpine"))
        self.assertFalse(policy.allows("someone/alpine"))

    def test_registry_hosts_compare_case_insensitively(self):
        self.assertTrue(allowlist("Registry.Example.com").allows("registry.EXAMPLE.com/app"))

    def test_the_refusal_names_the_container_and_what_is_allowed(self):
        policy = allowlist("registry.example.com")
        self.assertEqual(
            first_refusal(policy, [("build", "registry.example.com/app"), ("svc-0", "redis:7")]),
            "image `redis:7` of container `svc-0` is not from an allowed registry; "
            "this runner only runs images from: registry.example.com",
        )
        self.assertIsNone(first_refusal(policy, [("build", "registry.example.com/app")]))

    def test_bad_settings_are_refused_with_a_reason(self):
        self.assertIn("allowed_registries", settings_error("{}"))
        self.assertIn("empty", settings_error('{"allowed_registries": []}'))
        self.assertIn("unknown field", settings_error('{"allowed_registries": ["docker.io"], "extra": 1}'))
        self.assertIn("without a scheme", settings_error('{"allowed_registries": ["https://r.example"]}'))
        self.assertIn("is empty", settings_error('{"allowed_registries": [""]}'))
        self.assertIn("no tag", settings_error('{"allowed_registries": ["r.example/app:1"]}'))
        self.assertIn("settings must be", settings_error("not json"))
        self.assertIn("expected a sequence", settings_error('{"allowed_registries": 3}'))
        self.assertIn("expected a string", settings_error('{"allowed_registries": [3]}'))


if __name__ == "__main__":
    unittest.main()
