"""DICOM read as a viewer would: LUTs, windows, MONOCHROME1, bit depths, compressed syntaxes;
objects that are not frontal chest radiographs are refused with a reason."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from core import dicom, dicom_pixels
from core.imaging import DICOM, decode_for_model, sniff_file
from tests.dicoms import (
    BASIC_PROFILE_OTHER,
    BASIC_PROFILE_TEXT,
    BIRTH_DATE,
    PATIENT_NAME,
    chest_like,
    dataset,
    encode,
    identified,
    structured_report,
    voi_lut,
)


def write(tmp_path: Path, data: bytes, name: str = "object.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def mediastinum_brighter_than_lungs(pixels: np.ndarray) -> bool:
    """A frontal chest film shown right: the middle strip is brighter than the lung fields."""
    rows, columns = pixels.shape[:2]
    band = pixels[rows // 4 : 3 * rows // 4].astype(float)
    middle = band[:, int(columns * 0.45) : int(columns * 0.55)].mean()
    lungs = np.concatenate(
        [
            band[:, int(columns * 0.2) : int(columns * 0.35)],
            band[:, int(columns * 0.65) : int(columns * 0.8)],
        ],
        axis=1,
    ).mean()
    return bool(middle > lungs + 20)


def test_real_dx_with_file_meta_is_read_and_shown_upright(shared_data: Path) -> None:
    path = shared_data / "dicom" / "nih_cxr14_DX_1024.dcm"
    assert sniff_file(path) == DICOM
    info = dicom.read_info(path)
    assert (info.modality, info.frames, info.rows, info.has_pixels) == ("DX", 1, 1024, True)
    assert info.study_uid
    assert info.sop_uid
    assert dicom.refusal(info, accept_any=False) is None  # no body part or view: not refused
    assert mediastinum_brighter_than_lungs(np.asarray(dicom_pixels.load_image(path, 10**9)))


def test_real_acr_nema_monochrome1_cr_is_read_and_inverted(shared_data: Path) -> None:
    path = shared_data / "dicom" / "CR-MONO1-10-chest.dcm"
    assert path.read_bytes()[128:132] != b"DICM"  # no preamble: recognised by its first element
    assert sniff_file(path) == DICOM
    info = dicom.read_info(path)
    assert (info.modality, info.body_part, info.view_position) == ("CR", "CHEST", "PA")
    pixels = np.asarray(dicom_pixels.load_image(path, 10**9))
    assert mediastinum_brighter_than_lungs(pixels)  # MONOCHROME1 was inverted
    model_input = decode_for_model(path, DICOM, 75, 10**9)
    assert model_input.shape == (75, 75, 3)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_every_bit_depth_becomes_full_range_8_bit(tmp_path: Path, bits: int) -> None:
    values = chest_like()
    pixels = np.asarray(
        dicom_pixels.load_image(write(tmp_path, encode(dataset(values, bits=bits))), 10**9)
    )
    assert pixels.dtype == np.uint8
    assert pixels.min() == 0
    assert pixels.max() == 255
    assert np.abs(pixels / 255.0 - (values - values.min()) / np.ptp(values)).max() < 0.02
    assert mediastinum_brighter_than_lungs(pixels)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome1_looks_like_its_monochrome2_twin(tmp_path: Path, bits: int) -> None:
    values = chest_like()
    normal = dicom_pixels.load_image(
        write(tmp_path, encode(dataset(values, bits=bits)), "m2.dcm"), 10**9
    )
    inverted = dicom_pixels.load_image(
        write(tmp_path, encode(dataset(values, bits=bits, photometric="MONOCHROME1")), "m1.dcm"),
        10**9,
    )
    assert np.abs(np.asarray(normal, int) - np.asarray(inverted, int)).max() <= 1


def test_rescale_then_window_map_as_the_standard_says(tmp_path: Path) -> None:
    stored = np.array([[0, 500, 1000, 1500, 2000]], dtype=float) / 4095  # 12-bit raw values
    # Modality LUT: value = 2 * raw - 1000 -> -1000, 0, 1000, 2000, 3000; window 1000 +- 1000.
    ds = dataset(
        stored, bits=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2001
    )
    pixels = np.asarray(dicom_pixels.load_image(write(tmp_path, encode(ds)), 10**9))[0]
    assert pixels.tolist()[0] == 0  # -1000: below the window
    assert pixels.tolist()[1] == 0  # 0: the window's lower edge
    assert abs(int(pixels[2]) - 128) <= 1  # 1000: the centre
    assert pixels.tolist()[3:] == [255, 255]  # at and above the upper edge


def test_the_first_of_several_windows_is_used(tmp_path: Path) -> None:
    values = chest_like()
    first = dataset(values, bits=12, WindowCenter=[1000, 3000], WindowWidth=[800, 200])
    alone = dataset(values, bits=12, WindowCenter=1000, WindowWidth=800)
    a = np.asarray(dicom_pixels.load_image(write(tmp_path, encode(first), "a.dcm"), 10**9))
    b = np.asarray(dicom_pixels.load_image(write(tmp_path, encode(alone), "b.dcm"), 10**9))
    assert np.array_equal(a, b)


def test_a_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 1500, 2000, 4095]], dtype=float) / 4095
    ds = dataset(stored, bits=12, VOILUTSequence=voi_lut(entries=1001, first=1000))
    pixels = np.asarray(dicom_pixels.load_image(write(tmp_path, encode(ds)), 10**9))[0]
    assert pixels[0] == 0
    assert pixels[1] == 0
    assert abs(int(pixels[2]) - 127) <= 1
    assert pixels[3] == 255
    assert pixels[4] == 255


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_syntaxes_decode_like_the_uncompressed_object(
    tmp_path: Path, syntax: UID
) -> None:
    values = chest_like()
    plain = dicom_pixels.load_image(
        write(tmp_path, encode(dataset(values, bits=12)), "plain.dcm"), 10**9
    )
    compressed = dataset(values, bits=12)
    compressed.compress(syntax)
    path = write(tmp_path, encode(compressed), "compressed.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(np.asarray(dicom_pixels.load_image(path, 10**9)), np.asarray(plain))


def test_an_undecodable_syntax_is_an_error_naming_it(tmp_path: Path) -> None:
    ds = dataset(chest_like(), bits=8)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3 not really mpeg"])
    with pytest.raises(dicom.DicomError, match="cannot decode transfer syntax MPEG2"):
        dicom_pixels.load_image(write(tmp_path, encode(ds)), 10**9)


@pytest.mark.parametrize(
    ("make", "reason", "allowed_by_setting"),
    [
        (lambda: dataset(chest_like(), frames=3), "multi-frame object (3 frames)", False),
        (structured_report, "no pixel data (modality SR", False),
        (lambda: dataset(chest_like(), view="LL"), "view position LL is not frontal", True),
        (
            lambda: dataset(chest_like(), body_part="ABDOMEN"),
            "body part ABDOMEN is not CHEST",
            True,
        ),
        (lambda: dataset(chest_like(), modality="CT"), "modality CT is not a radiograph", True),
    ],
)
def test_objects_that_are_not_frontal_chest_radiographs_are_refused(
    tmp_path: Path, make: object, reason: str, allowed_by_setting: bool
) -> None:
    made = make()  # type: ignore[operator]
    info = dicom.read_info(write(tmp_path, made if isinstance(made, bytes) else encode(made)))
    assert (dicom.refusal(info, accept_any=False) or "").startswith(reason)
    assert (dicom.refusal(info, accept_any=True) is None) is allowed_by_setting


def with_raw_element(ds: pydicom.Dataset, tag: int, vr: str, value: object) -> bytes:
    """`ds` encoded with an element whose value its own VR could not hold (as exports do)."""
    ds[tag] = DataElement(tag, vr, value)
    return encode(ds)


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            lambda: with_raw_element(dataset(chest_like()), 0x00280008, "LO", "many"),
            "NumberOfFrames is not a number ('many')",
        ),
        (
            lambda: with_raw_element(dataset(chest_like()), 0x00280010, "US", [96, 3]),
            "Rows is not a number",
        ),
        (
            lambda: encode(dataset(chest_like(), StudyInstanceUID="1." + "2" * 70)),
            "StudyInstanceUID is 72 characters long",
        ),
    ],
)
def test_a_header_value_that_is_not_what_its_element_holds_is_a_reason_not_a_crash(
    tmp_path: Path, data: object, message: str
) -> None:
    with pytest.raises(dicom.DicomError) as refused:
        dicom.read_info(write(tmp_path, data()))  # type: ignore[operator]
    assert message in str(refused.value)


def test_an_unknown_transfer_syntax_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    raw = bytearray(encode(dataset(chest_like(), bits=8)))
    at = raw.find(b"1.2.840.10008.1.2.1\x00")
    raw[at : at + 20] = b"1.2.3.4.5.6.7.8.9.0\x00"  # the same length: the file meta still parses
    info = dicom.read_info(write(tmp_path, bytes(raw)))
    reason = dicom.refusal(info, accept_any=True) or ""
    assert reason.startswith("transfer syntax 1.2.3.4.5.6.7.8.9.0 is not a known one")


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS:UserWarning")
def test_a_nul_in_a_header_value_is_not_carried_into_what_is_stored(tmp_path: Path) -> None:
    path = write(tmp_path, encode(dataset(chest_like(), modality="C\x00T", view="P\x00A")))
    info = dicom.read_info(path)
    assert "\x00" not in (info.modality or "") + (info.view_position or "")
    assert "\x00" not in (dicom.refusal(info, accept_any=False) or "")


def test_a_truncated_object_is_an_error(tmp_path: Path) -> None:
    data = encode(dataset(chest_like(), bits=16))
    with pytest.raises(dicom.DicomError):
        dicom_pixels.load_image(write(tmp_path, data[: len(data) // 2]), 10**9)


def keywords_at_every_depth(ds: pydicom.Dataset) -> set[str]:
    found = set()
    for element in ds:
        found.add(element.keyword or f"private {element.tag}")
        if element.VR == "SQ":
            for item in element.value:
                found |= keywords_at_every_depth(item)
    return found


@pytest.mark.parametrize("acr_nema", [False, True])
def test_deidentify_follows_the_basic_profile_at_every_depth_and_keeps_pixels_and_uids(
    tmp_path: Path, acr_nema: bool
) -> None:
    ds = identified(dataset(chest_like(), bits=12, WindowCenter=2048, WindowWidth=3000))
    study_uid, sop_uid = ds.StudyInstanceUID, ds.SOPInstanceUID
    path = write(tmp_path, encode(ds, acr_nema=acr_nema))
    before = np.asarray(dicom_pixels.load_image(path, 10**9))
    dicom.deidentify(path)
    raw = path.read_bytes()
    assert PATIENT_NAME.encode() not in raw
    assert BIRTH_DATE.encode() not in raw
    assert b"ACC-99" not in raw
    assert b"OTHER-7" not in raw
    kept = pydicom.dcmread(path, force=True)
    left = keywords_at_every_depth(kept)
    assert not left & {*BASIC_PROFILE_TEXT, *BASIC_PROFILE_OTHER}
    assert not any(keyword.startswith("private") for keyword in left)
    assert (kept.StudyInstanceUID, kept.SOPInstanceUID) == (study_uid, sop_uid)
    assert kept.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in kept.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert np.array_equal(np.asarray(dicom_pixels.load_image(path, 10**9)), before)
    info = dicom.read_info(path)
    assert (info.modality, info.body_part, info.view_position) == ("DX", "CHEST", "PA")


def test_deidentify_keeps_the_lookup_tables_the_display_needs(tmp_path: Path) -> None:
    ds = dataset(chest_like(), bits=12, VOILUTSequence=voi_lut(4096, 0))
    ds.VOILUTSequence[0].LUTExplanation = PATIENT_NAME  # free text, even inside a LUT item
    path = write(tmp_path, encode(ds))
    before = np.asarray(dicom_pixels.load_image(path, 10**9))
    dicom.deidentify(path)
    assert PATIENT_NAME.encode() not in path.read_bytes()
    assert np.array_equal(np.asarray(dicom_pixels.load_image(path, 10**9)), before)


@pytest.mark.parametrize("name_element", [True, False])
def test_a_preamble_that_starts_like_a_jpeg_is_still_dicom_and_is_blanked(
    tmp_path: Path, name_element: bool
) -> None:
    ds = dataset(chest_like(), bits=12)
    if not name_element:  # only the preamble names the patient
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            delattr(ds, keyword)
    ds.preamble = (b"\xff\xd8\xff\xe0" + PATIENT_NAME.encode()).ljust(128, b"\0")
    path = write(tmp_path, encode(ds), name="study.jpeg")
    assert sniff_file(path) == DICOM
    dicom.deidentify(path)
    raw = path.read_bytes()
    assert raw[:128] == bytes(128)
    assert PATIENT_NAME.encode() not in raw


def test_jpeg_baseline_encapsulated_pixels_decode(tmp_path: Path) -> None:
    values = chest_like(128, 128)
    picture = Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    ds = dataset(values, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    pixels = np.asarray(dicom_pixels.load_image(write(tmp_path, encode(ds)), 10**9), dtype=float)
    stretched = (values - values.min()) / np.ptp(values)  # no window: the full range is shown
    assert np.abs(pixels / 255.0 - stretched).mean() < 0.02


def test_every_dicom_column_is_read_from_the_header_and_shown_with_results() -> None:
    from dataclasses import fields

    from core.models import DICOM_COLUMNS, Image
    from core.results import ResultRow

    info_fields = [f.name for f in fields(dicom.DicomInfo)]
    row_fields = [f.name for f in fields(ResultRow)]
    assert set(DICOM_COLUMNS) <= set(info_fields)
    assert all(hasattr(Image, column) for column in DICOM_COLUMNS)
    assert row_fields[-len(DICOM_COLUMNS) :] == list(DICOM_COLUMNS)  # the query's order


def _jpeg_dataset(stream_rows: int, stream_columns: int) -> pydicom.Dataset:
    """A JPEG baseline object whose header says 96x80, with a stream of the size given."""
    picture = Image.fromarray(
        np.round(chest_like(stream_rows, stream_columns) * 255).astype(np.uint8)
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    ds = dataset(chest_like(), bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _j2k_dataset(stream_rows: int, stream_columns: int) -> pydicom.Dataset:
    """A JPEG 2000 object whose header says 8x8, with a code stream of the size given."""
    ds = dataset(chest_like(stream_rows, stream_columns), bits=12)
    ds.compress(JPEG2000Lossless)
    ds.Rows, ds.Columns = 8, 8
    return ds


@pytest.mark.parametrize(
    ("make", "stated"),
    [
        (
            lambda: _j2k_dataset(3000, 3000),
            "code stream states 3000x3000 pixels, the header 8x8",
        ),
        (lambda: _jpeg_dataset(900, 700), "code stream states 700x900 pixels, the header 80x96"),
    ],
)
def test_a_code_stream_larger_than_its_header_says_is_refused_before_decoding(
    tmp_path: Path, make: object, stated: str
) -> None:
    """The decoder allocates what the stream states: the limit must apply to that size."""
    path = write(tmp_path, encode(make()))  # type: ignore[operator]
    with pytest.raises(dicom.DicomError, match=stated):
        dicom_pixels.load_image(path, max_pixels=10_000)


def test_a_code_stream_with_no_size_to_read_is_refused(tmp_path: Path) -> None:
    ds = _jpeg_dataset(96, 80)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0\x00\x04" + b"\x00" * 32])
    with pytest.raises(dicom.DicomError, match="code stream states no size we can read"):
        dicom_pixels.load_image(write(tmp_path, encode(ds)), max_pixels=10_000)


def test_a_jpeg_2000_code_stream_wrapped_in_a_jp2_file_is_measured(tmp_path: Path) -> None:
    ds = _j2k_dataset(120, 90)
    stream = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    wrapped = dicom_pixels.JP2_SIGNATURE + b"\x00\x00\x00\x14ftypjp2 " + b"\x00" * 8
    ds.PixelData = encapsulate([wrapped + len(stream).to_bytes(4, "big") + b"jp2c" + stream])
    with pytest.raises(dicom.DicomError, match="states 90x120 pixels, the header 8x8"):
        dicom_pixels.load_image(write(tmp_path, encode(ds)), max_pixels=10_000)
