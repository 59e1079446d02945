# The two commands of the README: `make run` and `make test`. Both set up what they need.
.PHONY: bootstrap lab lab-down run test lint unit dump
SHELL := /bin/bash
VENV := .venv/bin

bootstrap:
	@.ci/bootstrap

# The lab: libvirtd + QEMU (TCG) and four tenant VMs on this machine (tests/lab/README.md).
lab:
	@tests/lab/up.sh

lab-down:
	@tests/lab/down.sh

# Run the collector in the foreground: against this host's libvirt when it already runs
# domains, otherwise against the lab, which it starts first.
run: bootstrap
	@if virsh -r -c qemu:///system list --name 2>/dev/null | grep -q . && \
	    ! virsh -r -c qemu:///system list --name | grep -q '^hc-lab-'; then \
	  config=conf/hostcollector.yml; echo "run: using this host's libvirt"; \
	else \
	  tests/lab/up.sh; config=conf/lab.yml; echo "run: using the lab (tests/lab)"; \
	fi; \
	echo "run: metrics at http://127.0.0.1:9730/metrics (Ctrl-C stops)"; \
	exec $(VENV)/hostcollector run --config $$config

lint: bootstrap
	$(VENV)/ruff check hostcollector tests
	$(VENV)/ruff format --check hostcollector tests
	$(VENV)/mypy hostcollector

unit: bootstrap
	$(VENV)/pytest -m "not lab"

# Everything CI runs: lint, type check, unit tests and the lab tests on a real hypervisor.
test: bootstrap lint
	tests/lab/up.sh
	HOSTCOLLECTOR_LAB=required $(VENV)/pytest

dump: bootstrap
	$(VENV)/hostcollector dump --config conf/lab.yml
