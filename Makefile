# The short path in: `make run` serves the chat, `make test` runs every test. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1

.PHONY: run test lint format bench soak serverless services browser clean \
	lambda-env package deploy update manage template ws-url

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# uvicorn with the chat's limits (frame size, pings, keep-alive): chatsite/serve.py says which.
run: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python -m chatsite.serve --host $(HOST) --port $(PORT)

services:
	bash tests/start-services.sh

browser:
	bash tests/install-browser.sh

test: lint services browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff, and the layer contract of chat/ (pyproject.toml, [tool.importlinter]).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/.installed services
	$(BIN)/python bench/run.py

# 30 minutes of mixed traffic on both deployments (bench/soak.py); SOAK_ARGS="--minutes 2" to shorten.
soak: $(BIN)/.installed services
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

serverless: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py localgateway --host $(HOST) --port $(PORT)

# --- Zappa on Lambda (README, "Serverless"). Every Zappa command runs with VIRTUAL_ENV set to the
# Lambda environment (.lambda-env: the runtime's wheels, chatsite/deployment.py), whatever pyenv or
# an activated virtualenv would otherwise give Zappa. STAGE=production for the other stage.
STAGE ?= dev
LAMBDA_ENV := $(CURDIR)/.lambda-env
ZAPPA := env VIRTUAL_ENV=$(LAMBDA_ENV) $(BIN)/zappa

lambda-env: $(BIN)/.installed
	$(BIN)/python -m chatsite.deployment env

package: lambda-env
	$(ZAPPA) package $(STAGE) -o chat-$(STAGE).zip

deploy: lambda-env
	$(ZAPPA) deploy $(STAGE)

update: lambda-env
	$(ZAPPA) update $(STAGE)

# make manage CMD="migrate" (or CMD="createsuperuser ...")
manage: $(BIN)/.installed
	$(ZAPPA) manage $(STAGE) "$(CMD)"

# The CloudFormation template `zappa deploy` creates, the WebSocket API included (offline).
template: $(BIN)/.installed
	$(BIN)/python -m chatsite.deployment template $(STAGE) -o chat-$(STAGE)-template.json

# After the first deploy: CHAT_WS_URL (the stage's wss://… URL) into its remote_env file on S3.
ws-url: $(BIN)/.installed
	env VIRTUAL_ENV=$(LAMBDA_ENV) $(BIN)/python -m chatsite.deployment ws-url $(STAGE) --save

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .lambda-env .lambda-env.building
