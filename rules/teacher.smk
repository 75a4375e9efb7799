rule train_teacher:
    output:
        "results/{dataset}/teachers/{arch}-s{tseed}.h5",
    log:
        "logs/train_teacher/{dataset}/{arch}-s{tseed}.log",
    benchmark:
        "logs/bench/train_teacher/{dataset}/{arch}-s{tseed}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 2
    resources:
        gpu=gpu_count(),
        mem_mb=8000,
        runtime=runtime_minutes(240),
    params:
        data=dataset_spec,
        opts=cli_options("teacher"),
        device=config["device"],
    shell:
        "d3s train-teacher --data {params.data:q} --arch {wildcards.arch} --seed {wildcards.tseed} "
        "{params.opts} --device {params.device} --threads {threads} --out {output} > {log} 2>&1"
