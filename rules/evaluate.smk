rule evaluate_student:
    input:
        data=dataset_input,
        images="results/{dataset}/{method}/ipc{ipc}/images.h5",
        labels="results/{dataset}/{method}/ipc{ipc}/labels.h5",
    output:
        "results/{dataset}/{method}/ipc{ipc}/eval/{student}-s{seed}.json",
    log:
        "logs/evaluate_student/{dataset}/{method}/ipc{ipc}/{student}-s{seed}.log",
    benchmark:
        "logs/bench/evaluate_student/{dataset}/{method}/ipc{ipc}/{student}-s{seed}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=gpu_count(),
        mem_mb=student_memory("evaluate", data_splits=1),
        runtime=grow_with_attempt(480),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("evaluate_student"),
        data=dataset_spec,
        opts=cli_options("evaluate"),
        device=config["device"],
    shell:
        "{params.d3s} evaluate --images {input.images} --labels {input.labels} --data {params.data:q} "
        "--student {wildcards.student} --seed {wildcards.seed} --dataset-name {wildcards.dataset} "
        "{params.opts} --device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"


rule evaluate_full:
    input:
        data=dataset_input,
        teachers=teacher_files,
    output:
        "results/{dataset}/full/eval/{student}-s{seed}.json",
    log:
        "logs/evaluate_full/{dataset}/{student}-s{seed}.log",
    benchmark:
        "logs/bench/evaluate_full/{dataset}/{student}-s{seed}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 2
    resources:
        gpu=gpu_count(),
        mem_mb=memory(data_splits=2, batch="evaluate", test=True),
        runtime=grow_with_attempt(720),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("evaluate_full"),
        data=dataset_spec,
        teachers=input_option("--teacher", "teachers"),
        opts=cli_options("evaluate"),
        device=config["device"],
    shell:
        "{params.d3s} evaluate-full --data {params.data:q} {params.teachers} --student {wildcards.student} "
        "--seed {wildcards.seed} --dataset-name {wildcards.dataset} {params.opts} "
        "--device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"


rule summarize:
    input:
        results=eval_files,
        teachers=teacher_files,
    output:
        tsv=report(
            "results/{dataset}/summary.tsv",
            caption="../report/summary.rst",
            category="Results",
        ),
        md="results/{dataset}/summary.md",
    log:
        "logs/summarize/{dataset}.log",
    benchmark:
        "logs/bench/summarize/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=10,
    params:
        results=input_option("--result", "results"),
        teachers=input_option("--teacher", "teachers"),
    shell:
        "d3s summarize {params.results} {params.teachers} --dataset {wildcards.dataset} "
        "--tsv {output.tsv} --markdown {output.md} > {log} 2>&1"


localrules:
    summarize,
