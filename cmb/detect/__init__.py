"""CMB detection: candidate screen, CNN scoring, calibrated confidences.

The detect stage writes, on the subject's preprocessed grid (RAS-reoriented
native voxels, same scanner coordinates as the input image), a table with one row
per candidate and these columns (:data:`CANDIDATE_COLUMNS`):

``candidate_id``
    1..n, strongest first; the value of the candidate's voxels in the ``dseg`` image.
``i, j, k``
    Centre voxel on the preprocessed grid (integers).
``x_mm, y_mm, z_mm``
    Centre in scanner RAS millimetres.
``volume_mm3, diameter_mm``
    Extent of the dark blob (sphere-equivalent diameter).
``screen_score``
    Relative darkness from the classical screen (0-1).
``sphericity``
    1 for a ball, lower for tubes (veins) and sheets.
``phase_mean, phase_sign``
    Mean high-pass phase (radians, paramagnetic positive) over the blob and its
    sign (``paramagnetic``, ``diamagnetic``, or ``n/a`` without phase).
``phase_used``
    Whether the network saw the candidate's phase: false without a phase image, and for
    a candidate in wrapped phase (the model card's ``phase_wrap_limit``), scored on its
    magnitude alone.
``confidence``
    Calibrated probability that the candidate is a CMB.
``above_threshold``
    ``confidence >= threshold`` (the operating threshold of the model card, or config).
``vessel_length_mm, vessel_width_mm, vessel_elongation, vessel_angle_b0_deg, vessel_slices, vessel_bulge, vessel_darkening, tubularity``
    The vessel evidence (:mod:`cmb.detect.vessel_evidence`): the dark structure the
    candidate belongs to, measured at a lower threshold, and the Hessian tubularity at
    its centre; ``n/a`` for candidates far below the threshold (not measured).
``rejected, rejected_reason``
    ``vessel`` when the vessel rule rejects the candidate (its dark structure is a vein),
    else ``n/a``. Rejected candidates keep their confidence and are not counted.
"""

CANDIDATE_COLUMNS = [
    "candidate_id",
    "i",
    "j",
    "k",
    "x_mm",
    "y_mm",
    "z_mm",
    "volume_mm3",
    "diameter_mm",
    "screen_score",
    "sphericity",
    "phase_mean",
    "phase_sign",
    "phase_used",
    "confidence",
    "above_threshold",
    "vessel_length_mm",
    "vessel_width_mm",
    "vessel_elongation",
    "vessel_angle_b0_deg",
    "vessel_slices",
    "vessel_bulge",
    "vessel_darkening",
    "tubularity",
    "rejected",
    "rejected_reason",
]
