// wick: a lazy tensor engine with LoRA fine-tuning, generation and embeddings.
// One include for the whole public API.
#pragma once
#include "wick/base.h"
#include "wick/tensor.h"
#include "wick/ops.h"
#include "wick/grad.h"
#include "wick/gguf.h"
#include "wick/io.h"
#include "wick/model.h"
#include "wick/tokenizer.h"
#include "wick/chat.h"
#include "wick/embed.h"
#include "wick/sampler.h"
#include "wick/generate.h"
#include "wick/chat_session.h"
#include "wick/lora.h"
#include "wick/optim.h"
#include "wick/train.h"
