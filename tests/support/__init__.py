"""Test harness (no tests here): coglet driver, loopback servers, media checks, shared builders."""
