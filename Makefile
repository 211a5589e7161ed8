# Developer commands. `make test` is the command CI runs (through .ci/run).
.PHONY: install test sync docs readme clean

install:
	python -m pip install -c constraints.txt -e ".[dev]"

test:
	bash tools/test.sh

sync:
	python tools/check_sync.py

docs:
	python tools/build_docs.py

readme:
	python tools/readme.py

clean:
	rm -rf _docs _proc build dist *.egg-info
