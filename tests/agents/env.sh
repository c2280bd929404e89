#!/bin/sh
# A command agent whose final message is its whole environment.
env | sort
