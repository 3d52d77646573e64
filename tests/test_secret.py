"""Secret: the value shows only through reveal(), never through repr, str, format or pickle."""

from __future__ import annotations

import copy
import operator
import pickle
from dataclasses import dataclass

import pytest

from gateway.secret import MASK, Secret

VALUE = "s3cret-Value-42"


def test_repr_masks_the_value() -> None:
    assert repr(Secret(VALUE)) == "Secret('***')"


def test_str_is_the_mask() -> None:
    assert str(Secret(VALUE)) == MASK == "***"


def test_format_and_f_strings_show_the_mask_whatever_the_spec() -> None:
    secret = Secret(VALUE)
    assert f"{secret}" == f"{secret!s}" == f"{secret:>20}" == format(secret, "x") == MASK
    assert VALUE not in f"{secret!r}"
    # str.format and %-formatting are paths of their own.
    brace, percent = "{} {!r}", "%s %r"
    assert brace.format(secret, secret) == percent % (secret, secret) == "*** Secret('***')"


def test_a_container_repr_does_not_show_the_value() -> None:
    @dataclass
    class Holder:
        password: Secret

    assert VALUE not in repr(Holder(Secret(VALUE)))
    assert VALUE not in repr([Secret(VALUE)]) + repr({"key": Secret(VALUE)})


def test_reveal_returns_the_value() -> None:
    assert Secret(VALUE).reveal() == VALUE


def test_equal_values_are_equal_secrets() -> None:
    assert Secret(VALUE) == Secret(VALUE)
    assert hash(Secret(VALUE)) == hash(Secret(VALUE))


def test_different_values_are_different_secrets() -> None:
    assert Secret(VALUE) != Secret(VALUE + "x")
    assert Secret(VALUE) != Secret(VALUE[:-1])


def test_a_secret_never_equals_its_plain_value() -> None:
    assert Secret(VALUE) != VALUE
    assert operator.eq(VALUE, Secret(VALUE)) is False  # the str's side of the comparison


def test_non_ascii_secrets_compare_by_value() -> None:
    assert Secret("pässwörd€") == Secret("pässwörd€")
    assert Secret("pässwörd€") != Secret("passwörd€")


def test_len_is_the_length_of_the_value() -> None:
    assert len(Secret(VALUE)) == len(VALUE)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(VALUE), protocol=protocol)


def test_cannot_be_pickled_inside_a_container() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"password": Secret(VALUE)})


def test_cannot_be_copied_through_the_pickle_protocol() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(Secret(VALUE))


def test_fingerprint_is_short_hex() -> None:
    fingerprint = Secret(VALUE).fingerprint()
    assert len(fingerprint) == 8
    assert int(fingerprint, 16) >= 0


def test_fingerprint_is_stable() -> None:
    assert Secret(VALUE).fingerprint() == Secret(VALUE).fingerprint()


def test_fingerprint_differs_between_values() -> None:
    assert Secret(VALUE).fingerprint() != Secret(VALUE + "x").fingerprint()


def test_fingerprint_is_not_the_value() -> None:
    short = "abcd1234"
    assert Secret(short).fingerprint() != short
    assert short not in Secret(short).fingerprint()


def test_has_no_instance_dict_to_leak_through() -> None:
    assert not hasattr(Secret(VALUE), "__dict__")
