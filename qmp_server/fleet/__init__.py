"""Fleet mode: many emulated VMs in one process (issue 16).

Pure parts live here (:mod:`.config`: the fleet file and the flag form made into one
qmp-server command line per VM; :mod:`.commands`: the fleet monitor's QMP commands); the
process that runs them is :mod:`qmp_server.runtime.fleet`.
"""
