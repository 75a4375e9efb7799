rule plot_accuracy:
    input:
        "results/{dataset}/summary.tsv",
    output:
        report(
            "results/{dataset}/plots/accuracy.png",
            caption="../report/accuracy.rst",
            category="Results",
        ),
    log:
        "logs/plot_accuracy/{dataset}.log",
    benchmark:
        "logs/bench/plot_accuracy/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=10,
    shell:
        "exec d3s plot-accuracy --summary {input} --out {output} > {log} 2>&1"


rule plot_losses:
    input:
        unpack(synthetic_images),
    output:
        report(
            "results/{dataset}/plots/losses.png",
            caption="../report/losses.rst",
            category="Distillation",
        ),
    log:
        "logs/plot_losses/{dataset}.log",
    benchmark:
        "logs/bench/plot_losses/{dataset}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        images=input_option("--images", "images"),
        summary=summary_option,
    shell:
        "exec d3s plot-losses {params.images} {params.summary} --out {output} > {log} 2>&1"


rule plot_images:
    input:
        unpack(shown_images),
    output:
        report(
            "results/{dataset}/plots/images_{method}_ipc{ipc}.png",
            caption="../report/images.rst",
            category="Distilled images",
            subcategory="{method}",
        ),
    log:
        "logs/plot_images/{dataset}/{method}_ipc{ipc}.log",
    benchmark:
        "logs/bench/plot_images/{dataset}/{method}_ipc{ipc}.tsv"
    conda:
        "../envs/d3s.yaml"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    params:
        images=input_option("--images", "images"),
        summary=summary_option,
    shell:
        "exec d3s plot-images {params.images} {params.summary} --out {output} > {log} 2>&1"


localrules:
    plot_accuracy,
    plot_losses,
    plot_images,
