# Packing (datasets with `pack` on): list the source once, decode blocks of the shuffled index in
# parallel jobs, append them into the one HDF5 file every later stage reads (dataset_input).


rule pack_index:
    output:
        f"{PACK_DIR}/{{dataset}}/index.h5",
    log:
        "logs/pack_index/{dataset}.log",
    benchmark:
        "logs/bench/pack_index/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=memory(base=TORCH_MB + 1000),
        runtime=grow_with_attempt(60),
    params:
        data=pack_spec,
        seed=config["prepare"]["seed"],
    shell:
        "exec d3s pack-index --data {params.data:q} --seed {params.seed} --device cpu --out {output} > {log} 2>&1"


rule pack_part:
    input:
        index=f"{PACK_DIR}/{{dataset}}/index.h5",
    output:
        temp(f"{PACK_DIR}/{{dataset}}/parts/{{part}}-of-{{parts}}.h5"),
    log:
        "logs/pack_part/{dataset}/{part}-of-{parts}.log",
    benchmark:
        "logs/bench/pack_part/{dataset}/{part}-of-{parts}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: config["prepare"]["threads"]
    resources:
        gpu=0,
        # each decode worker is a forked d3s process (the benchmark sums their resident memory)
        mem_mb=lambda wildcards, threads, attempt: (TORCH_MB + 400 * threads) * attempt,
        runtime=grow_with_attempt(240),
    shell:
        "exec d3s pack --index {input.index} --part {wildcards.part} --parts {wildcards.parts} --device cpu "
        "--threads {threads} --out {output} > {log} 2>&1"


rule pack_merge:
    input:
        pack_parts,
    output:
        f"{PACK_DIR}/{{dataset}}/data.h5",
    log:
        "logs/pack_merge/{dataset}.log",
    benchmark:
        "logs/bench/pack_merge/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=memory(base=TORCH_MB),
        runtime=grow_with_attempt(240),
    params:
        parts=input_option("--part"),
    shell:
        "exec d3s pack-merge {params.parts} --out {output} > {log} 2>&1"
