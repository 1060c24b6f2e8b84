"""llm.dtypes: the dtype names a user may write, parsed in one place; anything else is a one-line user error."""

import jax.numpy as jnp
import numpy as np
import pytest

from llm.dtypes import DTYPES, parse_dtype
from llm.errors import ConfigError, ExitCode


@pytest.mark.parametrize("name, expected", [("float32", np.float32), ("bfloat16", jnp.bfloat16),
                                            ("float16", np.float16)])
def test_names_and_dtype_objects_parse_to_the_dtype(name, expected):
    assert parse_dtype(name) == np.dtype(expected)
    assert parse_dtype(np.dtype(expected)) == np.dtype(expected)  # e.g. an array's own dtype


@pytest.mark.parametrize("bad", ["bf16", "f4", "float64", "int8", "Float32", "", None, np.dtype(np.float64)])
def test_unknown_names_are_refused_with_one_line_naming_the_setting(bad):
    with pytest.raises(ConfigError) as e:
        parse_dtype(bad, "model.matmul_dtype")
    message = str(e.value)
    assert "\n" not in message and e.value.exit_code == ExitCode.USER_ERROR
    assert message.startswith(f"model.matmul_dtype={bad!r} is not a dtype")
    assert all(name in message for name in DTYPES)


def test_the_caller_chooses_the_error_class():
    class ExportError(ConfigError):
        pass

    with pytest.raises(ExportError, match="dtype='int32'"):
        parse_dtype("int32", error=ExportError)
