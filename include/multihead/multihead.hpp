// The whole public API of multihead.
#pragma once

#include "multihead/attention.hpp"
#include "multihead/error.hpp"
#include "multihead/tensor.hpp"
