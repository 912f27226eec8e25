"""Values <-> MessagePack without servers: what crosses, how, and the errors for what does
not."""

import pytest

import rask


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, "", "héllo", b"\x00\xff",
     [], [1, [2, [3]]], {"a": 1, "b": [None, 2.5]}, {1: "x"}],
)
def test_plain_values_round_trip(value):
    assert rask.decode(rask.encode(value)) == value


def test_tuples_read_back_as_lists_and_tuple_keys_as_tuples():
    assert rask.decode(rask.encode((1, (2, 3)))) == [1, [2, 3]]
    assert rask.decode(rask.encode({(1, 2): "pair"})) == {(1, 2): "pair"}


def test_bytearray_and_memoryview_are_bytes():
    assert rask.decode(rask.encode(bytearray(b"ab"))) == b"ab"
    assert rask.decode(rask.encode(memoryview(b"cd"))) == b"cd"


def test_other_types_are_a_type_error_naming_the_type():
    class Point:
        pass

    with pytest.raises(TypeError, match="Point"):
        rask.encode(Point())
    with pytest.raises(TypeError, match="set"):
        rask.encode({"nested": [{1, 2}]})


def test_an_int_beyond_64_bits_is_an_overflow_error():
    with pytest.raises(OverflowError):
        rask.encode(2**64)
    with pytest.raises(OverflowError):
        rask.encode(-(2**63) - 1)


def test_numpy_arrays_cross_as_the_ndarray_extension():
    np = pytest.importorskip("numpy")
    for array in [np.arange(12, dtype="<i4").reshape(3, 4), np.linspace(0, 1, 5),
                  np.array([[True, False]]), np.zeros((0, 3), dtype=np.uint8)]:
        back = rask.decode(rask.encode(array))
        assert back.dtype == array.dtype and back.shape == array.shape
        assert (back == array).all()
        back[...] = 0  # writable
    # Non-contiguous views are sent in C order.
    view = np.arange(16).reshape(4, 4)[:, ::2]
    assert (rask.decode(rask.encode(view)) == view).all()
    # Scalars are their Python value.
    assert rask.decode(rask.encode(np.float32(0.5))) == 0.5
    with pytest.raises(TypeError, match="object"):
        rask.encode(np.array([object()]))


def test_the_ndarray_extension_layout_is_dtype_shape_data():
    np = pytest.importorskip("numpy")
    ext = rask.decode(rask.encode(rask.ExtType(rask.NDARRAY_EXT, rask.encode(["<u2", [2], b"\x01\x00\x02\x00"]))))
    assert ext.tolist() == [1, 2] and ext.dtype == np.dtype("<u2")


def test_unknown_ext_types_cross_unchanged():
    ext = rask.ExtType(42, b"abc")
    assert rask.decode(rask.encode(ext)) == ext


def test_garbage_is_a_value_error():
    with pytest.raises(ValueError):
        rask.decode(b"\x92\x01")  # an array of 2 with one item
    with pytest.raises(ValueError):
        rask.decode(rask.encode(1) + b"\x00")
