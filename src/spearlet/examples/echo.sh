#!/bin/sh
# Returns the parameters object exactly as it arrived on stdin.
exec cat
