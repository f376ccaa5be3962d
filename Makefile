# mc0 — build, test, demo and install.
#
#   make demo      install prerequisites, build, run a broker + 3 MCollective servers, mco ping/rpc
#   make test      install prerequisites, then every test (what CI runs)
#   make install   PREFIX=/usr/local (DESTDIR honoured)
#   make man       man pages and shell completions into target/man
#   make deb       Debian packages into target/debian (debian/; make test-deb installs, tests, purges them)

PREFIX    ?= /usr/local
LIBDIR    ?= $(PREFIX)/lib
BINDIR    ?= $(PREFIX)/bin
INCLUDEDIR?= $(PREFIX)/include
RUBYDIR   ?= $(PREFIX)/share/mcollective/plugins
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CARGO     ?= $(shell command -v cargo || echo $(HOME)/.cargo/bin/cargo)
RELEASE   := target/release

# Debian packages the build, the tests and the demo need.
DEB_PACKAGES := build-essential pkg-config libzmq3-dev libzmq5 libsodium23 \
	mcollective mcollective-client ruby ruby-ffi ruby-ffi-rzmq ruby-minitest \
	valgrind python3 procps psmisc curl ca-certificates binutils \
	debhelper dh-python lintian systemd man-db prometheus chromium nats-server

.PHONY: all deps build test test-rust test-ruby test-python test-e2e test-install test-deb deb lint demo header man install uninstall clean

all: build

# Installs only what is missing, so repeated runs cost nothing.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@# Rust: Debian 12's own cargo is too old for the dependencies; use rustup's.
	@if ! [ -x "$(CARGO)" ]; then \
		echo "cargo not found: installing Rust with rustup (https://rustup.rs)"; \
		command -v curl >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq curl; }; \
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt \
			|| { echo "could not install Rust: install it from https://rustup.rs, then run make again"; exit 1; }; \
	fi

build: deps
	$(CARGO) build --release --locked --workspace

# test-deb installs and purges system packages: last, so that no installed
# libmc0 is on the loader path while the other tests run.
test: deps lint build test-rust test-ruby test-python test-e2e test-install test-deb
	@echo "== all tests passed"

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked --workspace

test-rust: build
	$(CARGO) test --release --locked --workspace

test-ruby: build
	@if [ -d ruby/test ]; then MC0_LIBRARY=$(CURDIR)/$(RELEASE)/libmc0.so ruby -Iruby/lib -e 'Dir["ruby/test/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }'; fi

test-e2e: build
	@if [ -x tests/e2e/run.sh ]; then timeout 600 tests/e2e/run.sh; fi
	@if [ -x tests/e2e/cluster.sh ]; then timeout 300 tests/e2e/cluster.sh; fi

test-install: build
	tests/install/check.sh

test-python: build
	cd python && MC0_LIBRARY=$(CURDIR)/$(RELEASE)/libmc0.so MC0_BIN_DIR=$(CURDIR)/$(RELEASE) python3 -m unittest discover -v -s tests 2>&1

# Debian 12 packages (debian/: debhelper, version from Cargo.toml) into target/debian.
# build and man here too: dh skips its build step once debian/debhelper-build-stamp exists.
deb: build man
	debian/rules binary

test-deb: deb
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) timeout 600 tests/deb/check.sh

demo: build
	tests/e2e/demo.sh

# Refreshes the committed header from what cbindgen generates (tests/header.rs checks they match).
header: build
	cp "$$(ls -t $(RELEASE)/build/mc0-*/out/mc0.h | head -1)" include/mc0.h

# Man pages and bash/zsh/fish completions of mc0d and mc0-keygen, generated from
# the clap definitions the binaries parse with (mc0d/src/cli.rs), into target/man
# (mc0d.1, mc0-keygen.1, completions/) for a package build to install.
man: deps
	$(CARGO) run --release --locked -p mc0d --example man -- target/man

mc0.pc: mc0.pc.in Cargo.toml
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' mc0.pc.in > $@

install: mc0.pc
	@test -f $(RELEASE)/libmc0.so || { echo "run 'make build' first"; exit 1; }
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) \
		$(DESTDIR)$(RUBYDIR)/mcollective/connector $(DESTDIR)$(RUBYDIR)/mcollective/agent
	install -m 0755 $(RELEASE)/libmc0.so $(DESTDIR)$(LIBDIR)/libmc0.so.$(VERSION)
	ln -sf libmc0.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libmc0.so.0
	ln -sf libmc0.so.0 $(DESTDIR)$(LIBDIR)/libmc0.so
	install -m 0644 $(RELEASE)/libmc0.a $(DESTDIR)$(LIBDIR)/libmc0.a
	install -m 0644 include/mc0.h $(DESTDIR)$(INCLUDEDIR)/mc0.h
	install -m 0644 mc0.pc $(DESTDIR)$(LIBDIR)/pkgconfig/mc0.pc
	install -m 0755 $(RELEASE)/mc0d $(RELEASE)/mc0-keygen $(DESTDIR)$(BINDIR)/
	install -m 0644 ruby/lib/mc0.rb $(DESTDIR)$(RUBYDIR)/mc0.rb
	install -m 0644 ruby/lib/mcollective/connector/zeromq.rb ruby/lib/mcollective/connector/zeromq.ddl \
		$(DESTDIR)$(RUBYDIR)/mcollective/connector/
	install -m 0644 ruby/lib/mcollective/agent/mc0.rb ruby/lib/mcollective/agent/mc0.ddl \
		$(DESTDIR)$(RUBYDIR)/mcollective/agent/

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libmc0.so* $(DESTDIR)$(LIBDIR)/libmc0.a $(DESTDIR)$(INCLUDEDIR)/mc0.h \
		$(DESTDIR)$(LIBDIR)/pkgconfig/mc0.pc $(DESTDIR)$(BINDIR)/mc0d $(DESTDIR)$(BINDIR)/mc0-keygen \
		$(DESTDIR)$(RUBYDIR)/mc0.rb $(DESTDIR)$(RUBYDIR)/mcollective/connector/zeromq.* \
		$(DESTDIR)$(RUBYDIR)/mcollective/agent/mc0.*

clean:
	$(CARGO) clean
	rm -f mc0.pc
