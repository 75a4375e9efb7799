rule distill_shard:
    input:
        data=dataset_input,
        teachers=teacher_files,
        stats=stats_files,
        init=init_images,
    output:
        temp("results/{dataset}/{synth}/ipc{ipc}/{dv}/shards/{shard}.h5"),
    log:
        "logs/distill_shard/{dataset}/{synth}/ipc{ipc}/{dv}/{shard}.log",
    benchmark:
        "logs/bench/distill_shard/{dataset}/{synth}/ipc{ipc}/{dv}/{shard}.tsv"
    priority: 2
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=distill_memory,
        runtime=grow_with_attempt(480),
    params:
        d3s=d3s_launcher,
        resume_dir=resume_dir("distill_shard"),
        teachers=input_option("--teacher", "teachers"),
        stats=input_option("--stats", "stats"),
        init=input_option("--init-images", "init"),
        data=dataset_spec,
        opts=distill_options,
        seed=config["seed"],
        device=config["device"],
    shell:
        "exec {params.d3s} distill --method {wildcards.synth} {params.teachers} {params.stats} {params.init} --shard {wildcards.shard} "
        "--data {params.data:q} "
        "--seed {params.seed} {params.opts} --device {params.device} --threads {threads} "
        "--resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"


# Merging is cheap (a copy of the shards) so it runs on the submitting node, unless the set is so
# large (ImageNet-21K) that it would hold gigabytes there: local_merge: false makes it a job.
if config["local_merge"]:

    localrules:
        merge_shards,


rule merge_shards:
    input:
        shard_files,
    output:
        "results/{dataset}/{synth}/ipc{ipc}/{dv}/images.h5",
    log:
        "logs/merge_shards/{dataset}/{synth}/ipc{ipc}/{dv}.log",
    benchmark:
        "logs/bench/merge_shards/{dataset}/{synth}/ipc{ipc}/{dv}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        # streams a block of rows at a time (artifacts.images.MERGE_BLOCK_BYTES, 64 MB): flat in the set size
        mem_mb=memory(base=TORCH_MB + 500),
        runtime=30,
    params:
        shards=input_option("--shard"),
        # Shards are temp(): once merged they are gone, so the distillation settings are a param
        # here too -- a change to them reruns the merge, which brings the shards back.
        distill_config=distill_digest,
    shell:
        "exec d3s merge {params.shards} --ipc {wildcards.ipc} --out {output} > {log} 2>&1"


rule select_real:
    input:
        data=dataset_input,
        teachers=teacher_files,
    output:
        "results/{dataset}/{coreset}/ipc{ipc}/default/images.h5",
    log:
        "logs/select_real/{dataset}/{coreset}/ipc{ipc}.log",
    benchmark:
        "logs/bench/select_real/{dataset}/{coreset}/ipc{ipc}.tsv"
    priority: 3
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        # herding and k-center run the teachers over the training set (features: fp16 on the host)
        gpu=lambda wildcards: 0 if wildcards.coreset == "random" else gpu_count(),
        mem_mb=memory(data_splits=2, test=True),
        runtime=grow_with_attempt(60),
    params:
        d3s=d3s_launcher,
        data=dataset_spec,
        teachers=input_option("--teacher", "teachers"),
        seed=config["seed"],
        device=lambda wildcards: (
            "cpu" if wildcards.coreset == "random" else config["device"]
        ),
    shell:
        "exec {params.d3s} select-real --data {params.data:q} {params.teachers} --ipc {wildcards.ipc} "
        "--selection {wildcards.coreset} --seed {params.seed} --device {params.device} --threads {threads} "
        "--out {output} > {log} 2>&1"
