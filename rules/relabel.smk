rule relabel:
    input:
        images="results/{dataset}/{method}/ipc{ipc}/{dv}/images.h5",
        teachers=teacher_files,
    output:
        "results/{dataset}/{method}/ipc{ipc}/{dv}/{rv}/labels.h5",
    log:
        "logs/relabel/{dataset}/{method}/ipc{ipc}/{dv}/{rv}.log",
    benchmark:
        "logs/bench/relabel/{dataset}/{method}/ipc{ipc}/{dv}/{rv}.tsv"
    priority: 1
    conda:
        "../envs/d3s.yaml"
    threads: job_threads(2)
    resources:
        gpu=gpu_count(),
        mem_mb=student_memory("relabel"),
        runtime=grow_with_attempt(240),
    params:
        resume_dir=resume_dir("relabel"),
        d3s=d3s_launcher,
        teachers=input_option("--teacher", "teachers"),
        opts=relabel_options,
        seed=config["seed"],
        device=config["device"],
    shell:
        "exec {params.d3s} relabel --images {input.images} {params.teachers} --seed {params.seed} {params.opts} "
        "--device {params.device} --threads {threads} --resume-dir {params.resume_dir} "
        "--out {output} > {log} 2>&1"
