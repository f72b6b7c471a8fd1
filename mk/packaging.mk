# Distro packages: `make deb` builds the Debian source and binary packages into dist/ and
# checks them with lintian; `make rpm-check` checks packaging/rpm/sockpool.spec with rpmspec.
#
# The package is built from a clean copy of the tree (the files git knows or would add, as
# they are on disk now), never from the working tree itself, and with the distro's own
# python3 (a PATH without pyenv shims or the venv): what a buildd would do.

DEB_VERSION_UPSTREAM := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)
DEB_REVISION := 1
DEB_BUILD := build/deb
DEB_SRCDIR := $(DEB_BUILD)/sockpool-$(DEB_VERSION_UPSTREAM)
DEB := dist/sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)_all.deb
# Everything the package is built from: rebuild when any of it changes.
DEB_INPUTS := $(wildcard $(shell git ls-files --cached --others --exclude-standard 2>/dev/null))
DEB_ENV := env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$(CURDIR)/$(DEB_BUILD) \
	LC_ALL=C.UTF-8 DEB_BUILD_OPTIONS="$(DEB_BUILD_OPTIONS)"

.PHONY: deb deb-deps rpm-check

deb: $(DEB)

# `make test` builds and checks the package first (tests/system/test_deb.py installs it; its
# fixture runs `make deb` too, a no-op by then), and the integration tests need rpmspec and
# the distro python3's `build` module (tests/integration/test_rpm_spec.py).
test: deb
test integration: deb-deps

deb-deps:
	@scripts/ensure-deps deb

$(DEB): $(DEB_INPUTS) | deb-deps
	@# debian/changelog and pyproject.toml must agree on the version.
	@clv=$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version); \
	if [ "$$clv" != "$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)" ]; then \
	  echo "deb: packaging/debian/changelog is at $$clv, pyproject.toml at" \
	       "$(DEB_VERSION_UPSTREAM) (want $(DEB_VERSION_UPSTREAM)-$(DEB_REVISION))" >&2; \
	  exit 1; fi
	rm -rf $(DEB_BUILD)
	mkdir -p $(DEB_SRCDIR) dist
	git ls-files -z --cached --others --exclude-standard \
	  | xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh \
	  | tar --null -T - -cf - | tar -xf - -C $(DEB_SRCDIR)
	@# The upstream tarball is the clean tree; debian/ goes in beside it.
	tar -C $(DEB_BUILD) --sort=name --owner=0 --group=0 --numeric-owner \
	  --mtime="@$$(dpkg-parsechangelog -l packaging/debian/changelog -S Timestamp)" \
	  -czf $(DEB_BUILD)/sockpool_$(DEB_VERSION_UPSTREAM).orig.tar.gz \
	  sockpool-$(DEB_VERSION_UPSTREAM)
	cp -R packaging/debian $(DEB_SRCDIR)/debian
	cd $(DEB_SRCDIR) && $(DEB_ENV) dpkg-buildpackage -us -uc --build=full
	cd $(DEB_BUILD) && cp sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)_all.deb \
	  sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION).dsc \
	  sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION).debian.tar.xz \
	  sockpool_$(DEB_VERSION_UPSTREAM).orig.tar.gz \
	  sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)_*.changes \
	  sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)_*.buildinfo $(CURDIR)/dist/
	@# No errors and no warnings; every override in debian/ says why it is there.
	$(DEB_ENV) lintian --fail-on error,warning --display-info \
	  $(DEB_BUILD)/sockpool_$(DEB_VERSION_UPSTREAM)-$(DEB_REVISION)_*.changes \
	  || { rm -f $(DEB); exit 1; }

# The RPM spec, expanded by rpmspec with the Fedora macros it uses (see the test).
rpm-check: venv deb-deps
	$(PY) -m pytest tests/integration/test_rpm_spec.py $(PYTEST_ARGS)
