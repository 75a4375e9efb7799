rule dataset_info:
    input:
        data=dataset_input,
    output:
        "results/{dataset}/dataset.json",
    log:
        "logs/dataset_info/{dataset}.log",
    benchmark:
        "logs/bench/dataset_info/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=0,
        mem_mb=memory(data_splits=2),
        runtime=grow_with_attempt(60),
    params:
        data=dataset_spec,
    shell:
        "exec d3s dataset-info --data {params.data:q} --threads {threads} --out {output} > {log} 2>&1"


rule train_teacher:
    input:
        data=dataset_input,
        info="results/{dataset}/dataset.json",
    output:
        "results/{dataset}/teachers/{arch}-s{tseed}.h5",
    log:
        "logs/train_teacher/{dataset}/{arch}-s{tseed}.log",
    benchmark:
        "logs/bench/train_teacher/{dataset}/{arch}-s{tseed}.tsv"
    priority: 3
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=memory(data_splits=2, batch="teacher_training", test=True),
        runtime=grow_with_attempt(240),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("train_teacher"),
        data=dataset_spec,
        opts=cli_options("teacher_training"),
        device=config["device"],
    shell:
        "exec {params.d3s} train-teacher --data {params.data:q} --info {input.info} --arch {wildcards.arch} "
        "--seed {wildcards.tseed} {params.opts} --device {params.device} --threads {threads} "
        "--resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"


rule import_teacher:
    input:
        data=dataset_input,
        info="results/{dataset}/dataset.json",
        checkpoint=pretrained_checkpoint,
    output:
        "results/{dataset}/teachers/pretrained/{name}.h5",
    log:
        "logs/import_teacher/{dataset}/{name}.log",
    benchmark:
        "logs/bench/import_teacher/{dataset}/{name}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=memory(data_splits=2, test=True),
        runtime=grow_with_attempt(60),
    params:
        d3s=d3s_launcher,
        data=dataset_spec,
        opts=pretrained_options,
        device=config["device"],
    shell:
        "export HF_HUB_OFFLINE=1; exec {params.d3s} import-teacher --data {params.data:q} --info {input.info} "
        "--checkpoint {input.checkpoint} {params.opts} --device {params.device} --threads {threads} "
        "--out {output} > {log} 2>&1"


# `checkpoint: timm:<model>`: timm's pretrained weights, fetched once on the submitting node
# (compute nodes often have no network); import_teacher then reads the file with the hub offline.
if any(timm_pretrained(p) for p in config["teachers"]["pretrained"]):

    localrules:
        fetch_pretrained,


rule fetch_pretrained:
    output:
        f"{PRETRAINED_DIR}/timm/{{model}}.safetensors",
    log:
        "logs/fetch_pretrained/{model}.log",
    benchmark:
        "logs/bench/fetch_pretrained/{model}.tsv"
    wildcard_constraints:
        model=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    shell:
        "exec d3s fetch-pretrained --model {wildcards.model} --out {output} > {log} 2>&1"
