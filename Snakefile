# d3s: D3S dataset distillation as a Snakemake workflow.
#   teacher -> statistics -> distillation shards -> merge -> soft labels -> student evaluation -> summary
# Run: snakemake --cores all            (embedded default: scikit-learn digits, CPU)
#      snakemake --profile profiles/slurm (cluster)

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless whole configs are given with --configfile (config/presets/<name>.yaml):
# those replace it, so a preset never inherits the digits run's CPU-sized schedules.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/prepare.smk"
include: "rules/teacher.smk"
include: "rules/stats.smk"
include: "rules/distill.smk"
include: "rules/relabel.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


onsuccess:
    print_summary(final_outputs())
