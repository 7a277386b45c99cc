// The whole public API of multihead.
#pragma once

#include "multihead/attention.hpp"
#include "multihead/attention_cached.hpp"
#include "multihead/error.hpp"
#include "multihead/kv_cache.hpp"
#include "multihead/multi_head_attention.hpp"
#include "multihead/rotary.hpp"
#include "multihead/safetensors.hpp"
#include "multihead/tensor.hpp"
