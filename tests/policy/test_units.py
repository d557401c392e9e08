import pytest

from meshnode.policy.units import Address, Duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50us", 0.00005),
        ("250ms", 0.25),
        ("3s", 3.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
    ],
)
def test_durations_with_units(text: str, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)
    assert str(Duration.parse(text)) == text


def test_a_duration_is_written_in_its_largest_whole_unit() -> None:
    assert [str(Duration(s)) for s in (0.0005, 0.0000025, 0.5, 90, 7200)] == [
        "500us",
        "2.5us",
        "500ms",
        "90s",
        "2h",
    ]


@pytest.mark.parametrize("value", [300000, "30", "3 days", "-1s", "", None, 1.5])
def test_durations_without_a_unit_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r'^expected a duration like "30s", got '):
        Duration.parse(value)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:15001", "::1", 15001), ("api:0", "api", 0)],
)
def test_addresses(text: str, host: str, port: int) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize("value", ["127.0.0.1", ":80", "host:http", "host:70000", 8080])
def test_bad_addresses(value: object) -> None:
    with pytest.raises(ValueError, match="expected an address like"):
        Address.parse(value)
