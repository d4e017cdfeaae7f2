// wick training: the causal-LM loss, datasets and the LoRA trainer.
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "base.h"
#include "lora.h"
#include "model.h"
#include "optim.h"
#include "tensor.h"
#include "tokenizer.h"

// Labels equal to this don't count in the loss (the prompt, padding): HF's -100.
#define WK_IGNORE_INDEX (-100)

// Mean cross-entropy of the model's prediction at position t against labels[:, t + 1]
// over the labels that count (HF's causal-LM loss). ids and labels are i32 [B, T],
// T >= 2; padding goes at the end (right), where causal attention keeps it from
// touching earlier positions. Lazy f32 scalar.
wk_tensor *wk_causal_lm_loss(wk_model *m, wk_tensor *ids, wk_tensor *labels);
