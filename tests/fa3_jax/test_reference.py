"""The pure-JAX reference through the shared attention test base."""

from tests.fa3_jax.attention_base import AttentionTestBase


class TestReference(AttentionTestBase):
    implementation = "reference"


class TestDefaultImplementation(AttentionTestBase):
    """``implementation=None`` must pick a path that passes the same checks."""

    implementation = None
    CASES = AttentionTestBase.CASES[::7]
    GRAD_CASES = AttentionTestBase.GRAD_CASES[::3]
