rule relabel:
    input:
        images="results/{dataset}/{method}/ipc{ipc}/images.h5",
        teachers=teacher_files,
    output:
        "results/{dataset}/{method}/ipc{ipc}/labels.h5",
    log:
        "logs/relabel/{dataset}/{method}/ipc{ipc}.log",
    benchmark:
        "logs/bench/relabel/{dataset}/{method}/ipc{ipc}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 2
    resources:
        gpu=gpu_count(),
        mem_mb=student_memory("relabel"),
        runtime=grow_with_attempt(240),
    params:
        d3s=d3s_launcher,
        teachers=input_option("--teacher", "teachers"),
        opts=cli_options("relabel"),
        seed=config["seed"],
        device=config["device"],
    shell:
        "{params.d3s} relabel --images {input.images} {params.teachers} --seed {params.seed} {params.opts} "
        "--device {params.device} --threads {threads} --out {output} > {log} 2>&1"
