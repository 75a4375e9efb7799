rule extract_stats:
    input:
        data=dataset_input,
        teacher="results/{dataset}/teachers/{teacher}.h5",
    output:
        "results/{dataset}/stats/{teacher}.h5",
    log:
        "logs/extract_stats/{dataset}/{teacher}.log",
    benchmark:
        "logs/bench/extract_stats/{dataset}/{teacher}.tsv"
    priority: 3
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=memory(data_splits=1, batch="stats"),
        runtime=grow_with_attempt(120),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("extract_stats"),
        data=dataset_spec,
        opts=cli_options("stats"),
        device=config["device"],
    shell:
        "exec {params.d3s} extract-stats --teacher {input.teacher} --data {params.data:q} {params.opts} "
        "--device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"
