"""What a job reads and writes: manifests and listings (:mod:`manifest`), the output store and its commit
protocol (:mod:`output`), object storage (:mod:`storage`), the output schemas (:mod:`schema`) and exports
(:mod:`export`)."""
