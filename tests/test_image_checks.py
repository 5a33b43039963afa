import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from cmb.failures import InputDataError
from cmb.image_checks import check_same_grid, load_image, voxel_sizes

AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


def _raises(path, match, **kw):
    """Assert load_image fails with a one-line message that starts with the file's path."""
    with pytest.raises(InputDataError, match=match) as err:
        load_image(path, **kw)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def _raw(path, data, affine=None, qform=None, sform=None, qcode=0, scode=0):
    img = nib.Nifti1Image(np.asarray(data), None)
    if qform is not None or qcode:
        img.header.set_qform(qform, code=qcode)
    if sform is not None or scode:
        img.header.set_sform(sform, code=scode)
    nib.save(img, path)
    return path


def test_good_image_loads_as_float32_with_affine_and_codes(make_nifti, tmp_path):
    path = make_nifti(tmp_path / "ok.nii.gz", qform_code=0, sform_code=1)
    img, messages = load_image(path)
    assert messages == []
    assert img.get_data_dtype() == np.float32 and img.dataobj.dtype == np.float32
    assert img.shape == (40, 40, 30)
    np.testing.assert_array_equal(img.affine, nib.load(path).affine)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 0
    np.testing.assert_allclose(np.asarray(img.dataobj), nib.load(path).get_fdata(), rtol=1e-6)


def test_int16_scaling_is_applied(tmp_path):
    img = nib.Nifti1Image(
        (np.arange(40 * 40 * 30).reshape(40, 40, 30) % 300).astype(np.int16), AFFINE
    )
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, tmp_path / "int.nii")
    out, _ = load_image(tmp_path / "int.nii")
    assert nib.load(tmp_path / "int.nii").get_data_dtype() == np.int16
    assert float(np.asarray(out.dataobj).max()) == pytest.approx(299 * 0.5 + 10)
    assert out.get_data_dtype() == np.float32


def test_missing_file(tmp_path):
    _raises(tmp_path / "sub-01_swi.nii.gz", "file not found")


def test_broken_symlink_says_datalad(tmp_path):
    link = tmp_path / "sub-01_swi.nii.gz"
    os.symlink("../.git/annex/objects/XX/YY/SHA256E-s1--abc.nii.gz", link)
    msg = _raises(link, "broken symlink")
    assert "datalad get" in msg


def test_valid_symlink_is_followed(make_nifti, tmp_path):
    target = make_nifti(tmp_path / "annex" / "content.nii.gz")
    link = tmp_path / "sub-01_swi.nii.gz"
    os.symlink(target, link)
    assert load_image(link)[0].shape == (40, 40, 30)


def test_git_annex_pointer_file(tmp_path):
    path = tmp_path / "sub-01_swi.nii.gz"
    path.write_bytes(b"/annex/objects/SHA256E-s123--abcdef.nii.gz\n")
    _raises(path, "git-annex pointer")


def test_empty_file(tmp_path):
    path = tmp_path / "sub-01_swi.nii.gz"
    path.touch()
    _raises(path, "empty file")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "sub-01_swi.nii.gz"
    path.write_bytes(gzip.compress(b"hello" * 400))
    _raises(path, "cannot read NIfTI header")


@pytest.mark.parametrize("name", ["sub-01_swi.nii.gz", "sub-01_swi.nii"])
def test_truncated_file(make_nifti, tmp_path, name):
    path = make_nifti(tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(path, "truncated or corrupt")


@pytest.mark.parametrize("shape", [(40, 40), (40, 40, 1)])
def test_2d_image(make_nifti, tmp_path, shape):
    path = make_nifti(
        tmp_path / "slice.nii.gz", data=np.random.default_rng(0).random(shape) + 1, affine=AFFINE
    )
    _raises(path, "2D image")


def test_4d_where_3d_expected(make_nifti, tmp_path):
    path = make_nifti(
        tmp_path / "sub-01_swi.nii.gz",
        data=np.random.default_rng(0).random((40, 40, 30, 3)) + 1,
        affine=AFFINE,
    )
    _raises(path, "4D image with 3 volumes")
    img, _ = load_image(path, allow_4d=True)
    assert img.shape == (40, 40, 30, 3)


def test_singleton_4th_dimension_is_squeezed(make_nifti, tmp_path):
    path = make_nifti(
        tmp_path / "one.nii.gz",
        data=np.random.default_rng(0).random((40, 40, 30, 1)) + 1,
        affine=AFFINE,
    )
    img, messages = load_image(path)
    assert img.shape == (40, 40, 30) and "squeezed" in messages[0]


def test_5d_image(make_nifti, tmp_path):
    path = make_nifti(tmp_path / "five.nii.gz", data=np.ones((40, 40, 30, 2, 2)), affine=AFFINE)
    _raises(path, "5D image", allow_4d=True)


def test_few_nonfinite_voxels_are_set_to_zero(make_nifti, tmp_path):
    data = np.random.default_rng(0).uniform(10, 100, (40, 40, 30))
    data[0, 0, :5] = np.nan
    data[1, 1, 1] = np.inf
    path = make_nifti(tmp_path / "nan.nii.gz", data=data)
    img, messages = load_image(path)
    out = np.asarray(img.dataobj)
    assert np.isfinite(out).all() and np.all(out[0, 0, :5] == 0) and out[1, 1, 1] == 0
    assert (
        len(messages) == 1
        and messages[0].startswith(str(path))
        and "6 NaN/Inf voxels" in messages[0]
    )


def test_many_nonfinite_voxels_are_an_error(make_nifti, tmp_path):
    data = np.random.default_rng(0).uniform(10, 100, (40, 40, 30))
    data[:, :, :3] = np.nan  # 10%
    _raises(make_nifti(tmp_path / "nan.nii.gz", data=data), "NaN/Inf voxels")


def test_all_zero_image(make_nifti, tmp_path):
    _raises(
        make_nifti(tmp_path / "zero.nii.gz", data=np.zeros((40, 40, 30))), "all voxels are zero"
    )


def test_constant_image(make_nifti, tmp_path):
    _raises(
        make_nifti(tmp_path / "const.nii.gz", data=np.full((40, 40, 30), 7.0)), "constant image"
    )


def test_no_sform_and_no_qform(tmp_path):
    path = _raw(tmp_path / "nocodes.nii.gz", np.random.default_rng(0).random((40, 40, 30)))
    assert nib.load(path).header["sform_code"] == 0 and nib.load(path).header["qform_code"] == 0
    _raises(path, "sform_code and qform_code are both 0")


def test_singular_affine(tmp_path):
    sform = AFFINE.copy()
    sform[:3, 1] = 0
    path = _raw(
        tmp_path / "singular.nii.gz",
        np.random.default_rng(0).random((40, 40, 30)),
        sform=sform,
        scode=1,
    )
    _raises(path, "degenerate affine")


def test_non_finite_affine(tmp_path):
    sform = AFFINE.copy()
    sform[0, 3] = np.nan
    path = _raw(
        tmp_path / "nanaff.nii.gz",
        np.random.default_rng(0).random((40, 40, 30)),
        sform=sform,
        scode=1,
    )
    _raises(path, "degenerate affine")


def test_qform_sform_handedness_disagree(tmp_path):
    flipped = np.diag([-2.0, 2.0, 2.5, 1.0])
    path = _raw(
        tmp_path / "hand.nii.gz",
        np.random.default_rng(0).random((40, 40, 30)),
        qform=flipped,
        qcode=1,
        sform=AFFINE,
        scode=1,
    )
    _raises(path, "disagree in handedness")


def test_qform_sform_small_disagreement_is_a_warning(tmp_path):
    shifted = AFFINE.copy()
    shifted[:3, 3] = [1.0, 0, 0]
    path = _raw(
        tmp_path / "shift.nii.gz",
        np.random.default_rng(0).random((40, 40, 30)) + 1,
        qform=shifted,
        qcode=1,
        sform=AFFINE,
        scode=2,
    )
    img, messages = load_image(path)
    assert any("qform and sform differ" in m for m in messages)
    np.testing.assert_array_equal(img.affine, AFFINE)


def test_huge_voxels(make_nifti, tmp_path):
    msg = _raises(
        make_nifti(tmp_path / "thick.nii.gz", zooms=(1.0, 1.0, 6.0), shape=(80, 80, 20)),
        "larger than 5 mm",
    )
    assert "1 x 1 x 6 mm" in msg


def test_five_mm_voxels_are_accepted(make_nifti, tmp_path):
    assert load_image(
        make_nifti(tmp_path / "t2s.nii.gz", zooms=(1.0, 1.0, 5.0), shape=(80, 80, 20))
    )


def test_partial_field_of_view(make_nifti, tmp_path):
    path = make_nifti(tmp_path / "crop.nii.gz", zooms=(1.0, 1.0, 1.0), shape=(100, 100, 20))
    msg = _raises(path, "partial field of view")
    assert "100 x 100 x 20 mm" in msg
    assert load_image(path, min_fov_mm=None)[0].shape == (100, 100, 20)


def test_complex_data_is_refused(tmp_path):
    data = (np.random.default_rng(0).random((40, 40, 30)) * np.exp(1j)).astype(np.complex64)
    path = tmp_path / "cplx.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    _raises(path, "complex")


def test_spaces_and_unicode_in_path(make_nifti, tmp_path):
    path = make_nifti(tmp_path / "dossier é ü" / "my scan ✓.nii.gz")
    assert load_image(path)[0].shape == (40, 40, 30)
    path.write_bytes(b"")
    _raises(path, "empty file")


def test_real_fixture_needs_fov_check_off(real_megre):
    _raises(real_megre["mag"], "partial field of view", allow_4d=True)
    img, _ = load_image(real_megre["mag"], allow_4d=True, min_fov_mm=None)
    assert img.shape == (51, 51, 41, 3) and np.isfinite(np.asarray(img.dataobj)).all()


def test_check_same_grid():
    a = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE)
    check_same_grid(a, nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE + 1e-4), "m", "p")
    with pytest.raises(InputDataError, match=r"^p.nii: grid differs from m.nii: shape"):
        check_same_grid(
            a, nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), AFFINE), "m.nii", "p.nii"
        )
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0
    with pytest.raises(InputDataError, match="affines differ by up to 1 mm"):
        check_same_grid(
            a, nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), shifted), "m.nii", "p.nii"
        )
    a4 = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), AFFINE)
    with pytest.raises(InputDataError, match="shape"):
        check_same_grid(a4, nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), AFFINE), "m", "p")


def test_voxel_sizes_of_oblique_affine():
    theta = np.deg2rad(30)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.5, 0.5, 2.0])
    np.testing.assert_allclose(voxel_sizes(affine), [0.5, 0.5, 2.0])
