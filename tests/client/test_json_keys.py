"""loads_unique_keys: JSON whose objects give each key once; a key given twice is named with its object's place."""

import pytest

from gr00t_client.json_keys import RepeatedKeyError, loads_unique_keys


def test_a_document_with_unique_keys_reads_as_json_loads_reads_it():
    assert loads_unique_keys('{"a": {"b": [1, {"c": 2}]}, "d": null}') == {"a": {"b": [1, {"c": 2}]}, "d": None}


@pytest.mark.parametrize("text, key, where", [
    ('{"a": 1, "a": 2}', "a", ""),
    ('{"a": {"b": 1, "b": 2}}', "b", "a"),
    ('{"a": [0, {"c": 1, "c": 1}]}', "c", "a[1]"),
])
def test_a_key_given_twice_is_named_with_where_its_object_is(text, key, where):
    with pytest.raises(RepeatedKeyError) as info:
        loads_unique_keys(text)
    assert (info.value.key, info.value.where) == (key, where)


def test_the_same_key_in_two_objects_is_not_a_repeat():
    assert loads_unique_keys('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
