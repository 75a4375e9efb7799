# {labelset}: a relabel variant's folder (soft labels, from its labels.h5), or `hard` (no labels).
rule evaluate_student:
    input:
        data=dataset_input,
        images="results/{dataset}/{method}/ipc{ipc}/{dv}/images.h5",
        labels=soft_labels_file,
    output:
        seed_files(
            "results/{dataset}/{method}/ipc{ipc}/{dv}/{labelset}/{ev}/{student}-s{seed}.json"
        ),
    log:
        seed_name(
            "logs/evaluate_student/{dataset}/{method}/ipc{ipc}/{dv}/{labelset}/{ev}/{student}-s{seed}.log"
        ),
    benchmark:
        seed_name(
            "logs/bench/evaluate_student/{dataset}/{method}/ipc{ipc}/{dv}/{labelset}/{ev}/{student}-s{seed}.tsv"
        )
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
        labels=input_option("--labels", "labels"),
        mode=label_mode,
        variant=lambda wildcards: f"{wildcards.dv}/{wildcards.labelset}/{wildcards.ev}",
        opts=evaluate_options,
        seeds=seed_options,
        outs=output_option("--out"),
        device=config["device"],
    shell:
        "exec {params.d3s} evaluate --images {input.images} {params.labels} --label-mode {params.mode} --data {params.data:q} "
        "--student {wildcards.student} {params.seeds} --dataset-name {wildcards.dataset} "
        "--variant {params.variant:q} {params.opts} --device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "{params.outs} > {log} 2>&1"


rule evaluate_full:
    input:
        data=dataset_input,
        teachers=teacher_files,
    output:
        seed_files("results/{dataset}/full/{labelmode}/{ev}/{student}-s{seed}.json"),
    log:
        seed_name("logs/evaluate_full/{dataset}/{labelmode}/{ev}/{student}-s{seed}.log"),
    benchmark:
        seed_name(
            "logs/bench/evaluate_full/{dataset}/{labelmode}/{ev}/{student}-s{seed}.tsv"
        )
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=memory(data_splits=2, batch="evaluate", test=True),
        runtime=grow_with_attempt(720),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("evaluate_full"),
        data=dataset_spec,
        teachers=input_option("--teacher", "teachers"),
        variant=lambda wildcards: f"{wildcards.labelmode}/{wildcards.ev}",
        opts=evaluate_options,
        seeds=seed_options,
        outs=output_option("--out"),
        device=config["device"],
    shell:
        "exec {params.d3s} evaluate-full --data {params.data:q} {params.teachers} --student {wildcards.student} "
        "--label-mode {wildcards.labelmode} {params.seeds} --dataset-name {wildcards.dataset} "
        "--variant {params.variant:q} {params.opts} "
        "--device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "{params.outs} > {log} 2>&1"


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
        sweep=report(
            "results/{dataset}/sweep.tsv",
            caption="../report/sweep.rst",
            category="Results",
        ),
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
        student=config["students"][0],
    shell:
        "exec d3s summarize {params.results} {params.teachers} --dataset {wildcards.dataset} "
        "--select-by {params.student} --tsv {output.tsv} --markdown {output.md} --sweep {output.sweep} > {log} 2>&1"


localrules:
    summarize,
