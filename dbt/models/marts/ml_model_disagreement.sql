{#
  How far the selected model's score is from the ensemble's, per day and
  selected model: the mean gap, and how many predictions differ by more than
  var('disagreement_threshold').
#}
{{ config(
    incremental_strategy='merge',
    unique_key=['prediction_day', 'selected_model'],
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}

with gaps as (
    select
        date(prediction_at) as prediction_day,
        coalesce(selected_model, 'unknown') as selected_model,
        abs(selected_prediction - ensemble_score) as gap
    from {{ ref('stg_predictions') }}
    where {{ in_days('prediction_at', days) }}
      and selected_prediction is not null and ensemble_score is not null
)

select
    prediction_day,
    selected_model,
    count(*) as predictions,
    avg(gap) as mean_abs_gap,
    countif(gap > {{ var('disagreement_threshold') }}) as disagreements,
    countif(gap > {{ var('disagreement_threshold') }}) / count(*) as disagreement_rate,
    current_timestamp() as refreshed_at
from gaps
group by 1, 2
