"""Registration to MNI and the MARS region map in each subject's native space.

- build_mars_map: the MNI-space MARS map (dseg + label table), once per run.
"""

MARS_RES = config["mars"]["resolution_mm"]
MNI_MARS = bids(root=f"{OUT}/tpl-{MNI}", prefix=f"tpl-{MNI}", res=str(MARS_RES), desc="mars",
                suffix="dseg.nii.gz")
MNI_MARS_TSV = MNI_MARS.replace(".nii.gz", ".tsv")


rule build_mars_map:
    """MARS regions (lobar, deep, infratentorial per hemisphere; CSF) on the MNI grid."""
    output:
        dseg=MNI_MARS,
        tsv=MNI_MARS_TSV,
    params:
        juxtacortical_mm=config["mars"]["juxtacortical_mm"],
        capsule_mm=config["mars"]["capsule_mm"],
        resolution_mm=MARS_RES,
    log:
        f"{OUT}/logs/build_mars_map/log.txt",
    benchmark:
        f"{OUT}/benchmarks/build_mars_map/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.mars_map --out-dseg {output.dseg:q} --out-tsv {output.tsv:q}"
        " --juxtacortical-mm {params.juxtacortical_mm} --capsule-mm {params.capsule_mm}"
        " --resolution-mm {params.resolution_mm} &> {log:q}"
